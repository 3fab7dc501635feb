package cdc

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// insertRetrying commits one outbox row, retrying while the pool finds its
// way to the new primary after a failover.
func (b *bundle) insertRetrying(t *testing.T) string {
	t.Helper()
	var id string
	pgtest.WaitFor(t, 30*time.Second, "an insert on the new primary", func() bool {
		return b.pool.QueryRow(context.Background(),
			`INSERT INTO portal_event_outbox (event_type) VALUES ('test.event') RETURNING id::text`).Scan(&id) == nil
	})
	return id
}

// The primary crashes and its synchronous standby is promoted: the stream,
// on the two-host URL, follows the new primary (another timeline), says
// so once, and wakes the sweeper.
func TestFollowsPromotedStandby(t *testing.T) {
	t.Parallel()
	pair := pgtest.StartPair(t, true)
	b, rec, s := streamingAt(t, pair.URL("postgres"))
	select {
	case <-s.Wake():
		t.Fatal("Switched signalled before any switch")
	default:
	}

	if err := pair.Primary.StopServer("immediate"); err != nil {
		t.Fatal(err)
	}
	if err := pair.Promote(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Wake():
	case <-time.After(30 * time.Second):
		t.Fatal("Switched not signalled within 30s of the promotion")
	}
	waitStreaming(t, s)
	id := b.insertRetrying(t)
	pgtest.WaitFor(t, 10*time.Second, "a row from the promoted standby", func() bool { return rec.has(id) })
	b.loggedOnce(t, "now following another server")
	if n := strings.Count(b.logs.String(), fmt.Sprintf("host=127.0.0.1:%d", pair.Standby.Port())); n == 0 {
		t.Errorf("the switch's log does not name the new server 127.0.0.1:%d", pair.Standby.Port())
	}
}

// sessions is how many sessions the test's database has had: each check
// and each stream session opens some.
func (b *bundle) sessions(t *testing.T) int64 {
	t.Helper()
	var n int64
	if err := b.pool.QueryRow(context.Background(), `SELECT sessions FROM pg_stat_database WHERE datname = current_database()`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A role without REPLICATION cannot stream: the stream says so once, runs
// sweep-only (RoleUnavailable) while it checks again and again, and
// streams as soon as the role may.
func TestUnavailableServerIsCheckedAgain(t *testing.T) {
	t.Parallel()
	b := setup(t)
	role, url := b.role(t, "later", "", "pw-later")
	b.exec(t, `ALTER TABLE portal_event_outbox OWNER TO `+role,
		`GRANT CREATE ON DATABASE `+b.pool.Config().ConnConfig.Database+` TO `+role)
	b.cfg.DatabaseURL = url
	b.tweak = func(s *Stream) { s.unavailableEvery = 20 * time.Millisecond }
	rec := newRecorder()
	s, _ := b.start(t, rec)
	pgtest.WaitFor(t, 10*time.Second, "the stream to find the role unable", func() bool {
		st := s.State()
		return st.Role == RoleUnavailable && strings.Contains(st.LastError, "REPLICATION")
	})
	before := b.sessions(t)
	pgtest.WaitFor(t, 20*time.Second, "several checks", func() bool { return b.sessions(t) >= before+5 })
	b.loggedOnce(t, "logical replication is unavailable")
	if s.Streaming() {
		t.Error("Streaming() while unavailable: the sweeper would leave fresh rows to nobody")
	}

	b.exec(t, `ALTER ROLE `+role+` REPLICATION`)
	waitStreaming(t, s)
	id := b.insert(t)
	pgtest.WaitFor(t, 5*time.Second, "a row once the role may replicate", func() bool { return rec.has(id) })
}

// Every WAL sender taken is a passing failure: the stream retries at its
// reconnect backoff, not as an unavailable server, and streams once one is
// free.
func TestWALSendersTakenIsPassing(t *testing.T) {
	t.Parallel()
	c := pgtest.StartT(t, pgtest.WithSetting("max_wal_senders", "1"))
	b := setupURL(t, c.URL("postgres"))
	holder := walsender(t, c.URL("postgres"))
	rec := newRecorder()
	s, _ := b.start(t, rec)
	pgtest.WaitFor(t, 10*time.Second, "the stream to find no WAL sender", func() bool {
		return strings.Contains(s.State().LastError, "max_wal_senders")
	})
	if st := s.State(); st.Role != RoleDown {
		t.Errorf("role %s with every WAL sender taken, want %s (a passing failure)", st.Role, RoleDown)
	}
	if err := holder.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitStreaming(t, s)
	if n := strings.Count(b.logs.String(), "logical replication is unavailable"); n != 0 {
		t.Errorf("took every WAL sender taken for an unavailable server (%d logs)", n)
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	t.Parallel()
	// A database that does not answer: Run must still return at once.
	s := New(Config{DatabaseURL: "postgres://u:p@127.0.0.1:1/db", Slot: "s", Publication: "p"}, newRecorder(), slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	pgtest.WaitFor(t, 5*time.Second, "the stream to report down", func() bool {
		st := s.State()
		return st.LastError != "" && !strings.Contains(st.LastError, ":p@")
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil on cancel", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if st := s.State(); st.Role != RoleDown {
		t.Errorf("State() = %+v, want down", st)
	}
}

func TestPostgresRestartIsSurvived(t *testing.T) {
	t.Parallel()
	c := pgtest.StartT(t)
	b, rec, s := streamingAt(t, c.URL("postgres"))

	if err := c.Restart("immediate"); err != nil {
		t.Fatal(err)
	}
	// Inserted at once, most likely before the stream is back: the slot
	// keeps it for the stream.
	var after string
	pgtest.WaitFor(t, 10*time.Second, "an insert after the restart", func() bool {
		err := b.pool.QueryRow(context.Background(),
			`INSERT INTO portal_event_outbox (event_type) VALUES ('after') RETURNING id::text`).Scan(&after)
		return err == nil
	})
	pgtest.WaitFor(t, 15*time.Second, "the row inserted after the restart", func() bool { return rec.has(after) })
	if !s.Streaming() {
		t.Error("not streaming after the restart")
	}
}

func TestTwoStreamsOneSlot(t *testing.T) {
	t.Parallel()
	b := setup(t)
	recA, recB := newRecorder(), newRecorder()
	a, stopA := b.start(t, recA)
	waitStreaming(t, a)
	sb, _ := b.start(t, recB)
	pgtest.WaitFor(t, 10*time.Second, "the second stream to stand by", func() bool { return sb.State().Role == RoleStandby })
	if sb.Streaming() {
		t.Fatal("both streams claim the slot")
	}
	id := b.insert(t)
	pgtest.WaitFor(t, 5*time.Second, "the streamer to get a row", func() bool { return recA.has(id) })
	if recB.count(id) != 0 {
		t.Error("the standby got a row")
	}

	stopA()
	pgtest.WaitFor(t, 15*time.Second, "the standby to take over", sb.Streaming)
	later := b.insert(t)
	pgtest.WaitFor(t, 5*time.Second, "the new streamer to get a row", func() bool { return recB.has(later) })
	b.loggedOnce(t, "standing by")
}

func TestReadOnlyServerIsWaitedFor(t *testing.T) {
	t.Parallel()
	c := pgtest.StartT(t)
	b := setupURL(t, c.URL("postgres"))
	// Restart the server as a standby without a primary: read-only, in
	// recovery, as a failed-over address can be for a while.
	if err := c.StopServer("fast"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.Dir(), "data", "standby.signal"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.StartServer(); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	s, _ := b.start(t, rec)
	pgtest.WaitFor(t, 10*time.Second, "the stream to see recovery", func() bool {
		return strings.Contains(s.State().LastError, "recovery")
	})
	// The pool's connections died with the restart: retry until a fresh
	// one promotes.
	pgtest.WaitFor(t, 10*time.Second, "the promotion", func() bool {
		_, err := b.pool.Exec(context.Background(), `SELECT pg_promote()`)
		return err == nil
	})
	waitStreaming(t, s)
	id := b.insert(t)
	pgtest.WaitFor(t, 5*time.Second, "a row after the promotion", func() bool { return rec.has(id) })
	b.loggedOnce(t, "in recovery")
}
