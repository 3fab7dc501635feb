package cdc

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/store"
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
	if n := strings.Count(b.logs.String(), "now following another server"); n != 1 {
		t.Errorf("logged the switch %d times, want once", n)
	}
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
	ctx := context.Background()
	role := "later_" + b.cfg.Slot
	for _, sql := range []string{
		fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD 'pw-later'`, role),
		fmt.Sprintf(`ALTER TABLE portal_event_outbox OWNER TO %s`, role),
		fmt.Sprintf(`GRANT CREATE ON DATABASE %s TO %s`, strings.TrimPrefix(mustDB(t, b.url), "/"), role),
	} {
		if _, err := b.pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_, _ = b.pool.Exec(context.Background(), `DROP OWNED BY `+role)
		_, _ = b.pool.Exec(context.Background(), `DROP ROLE `+role)
	})
	b.cfg.DatabaseURL = withUser(t, b.url, role, "pw-later")
	b.tweak = func(s *Stream) { s.unavailableEvery = 20 * time.Millisecond }
	rec := newRecorder()
	s, _ := b.start(t, rec)
	pgtest.WaitFor(t, 10*time.Second, "the stream to find the role unable", func() bool {
		st := s.State()
		return st.Role == RoleUnavailable && strings.Contains(st.LastError, "REPLICATION")
	})
	before := b.sessions(t)
	pgtest.WaitFor(t, 20*time.Second, "several checks", func() bool { return b.sessions(t) >= before+5 })
	if n := strings.Count(b.logs.String(), "logical replication is unavailable"); n != 1 {
		t.Errorf("said logical replication is unavailable %d times, want once", n)
	}
	if s.Streaming() {
		t.Error("Streaming() while unavailable: the sweeper would leave fresh rows to nobody")
	}

	if _, err := b.pool.Exec(ctx, `ALTER ROLE `+role+` REPLICATION`); err != nil {
		t.Fatal(err)
	}
	waitStreaming(t, s)
	id := b.insert(t)
	pgtest.WaitFor(t, 5*time.Second, "a row once the role may replicate", func() bool { return rec.has(id) })
}

func mustDB(t *testing.T, url string) string {
	t.Helper()
	conf, err := parseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	return conf.sql.Database
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

func TestMajorVersion(t *testing.T) {
	for v, want := range map[string]int{"15.8 (Debian 15.8-0+deb12u1)": 15, "17.2": 17, "18beta1": 18, "": 0, "x": 0} {
		if got := store.MajorVersion(v); got != want {
			t.Errorf("MajorVersion(%q) = %d, want %d", v, got, want)
		}
	}
}
