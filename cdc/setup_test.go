package cdc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// With the slot idle, the server removes the WAL it holds
// (max_slot_wal_keep_size) and invalidates it.
func TestInvalidatedSlotIsRecreated(t *testing.T) {
	t.Parallel()
	invalidatedSlotIsRecreated(t, "wal_removed", func(b *bundle) {
		ctx := context.Background()
		b.exec(t, `ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'`, `SELECT pg_reload_conf()`)
		pgtest.WaitFor(t, 30*time.Second, "the slot to be invalidated", func() bool {
			b.exec(t, `INSERT INTO other (body) SELECT repeat(md5(g::text), 30) FROM generate_series(1, 20000) g`,
				`SELECT pg_switch_wal()`, `CHECKPOINT`)
			slot, err := store.SlotInfo(ctx, b.pool, b.cfg.Slot)
			return err == nil && slot.WALStatus == "lost"
		})
	})
}

// On PostgreSQL 18 a slot no one streams from for
// idle_replication_slot_timeout is invalidated at the next checkpoint,
// and reads as lost as a slot whose WAL was removed does.
func TestIdleInvalidatedSlotIsRecreated(t *testing.T) {
	pgtest.SkipBelow(t, 18, "idle_replication_slot_timeout invalidates idle slots from 18 on")
	t.Parallel()
	invalidatedSlotIsRecreated(t, "idle_timeout", func(b *bundle) {
		ctx := context.Background()
		b.exec(t, `ALTER SYSTEM SET idle_replication_slot_timeout = '1s'`, `SELECT pg_reload_conf()`)
		pgtest.WaitFor(t, 30*time.Second, "the idle slot to be invalidated", func() bool {
			b.exec(t, `CHECKPOINT`)
			slot, err := store.SlotInfo(ctx, b.pool, b.cfg.Slot)
			return err == nil && slot.InvalidationReason == "idle_timeout"
		})
		if slot, err := store.SlotInfo(ctx, b.pool, b.cfg.Slot); err != nil || slot.WALStatus != "lost" {
			t.Fatalf("the idle-invalidated slot reads wal_status %q (%v); the stream recreates a slot whose wal_status is lost", slot.WALStatus, err)
		}
		// The new slot idles between the stream's sessions too: a timeout
		// of a second could invalidate it again while the test runs.
		b.exec(t, `ALTER SYSTEM RESET idle_replication_slot_timeout`, `SELECT pg_reload_conf()`)
	})
}

// invalidatedSlotIsRecreated streams on a cluster of its own, stops, lets
// invalidate invalidate the idle slot, and checks that a new stream makes a
// new slot and sends a row through it, saying once why the old one went:
// the slot's position is all that is lost (the sweeper delivers the rows
// of the gap).
func invalidatedSlotIsRecreated(t *testing.T, reason string, invalidate func(*bundle)) {
	c := pgtest.StartT(t)
	b := setupURL(t, c.URL("postgres"))
	rec := newRecorder()
	s, stop := b.start(t, rec)
	waitStreaming(t, s)
	stop()

	invalidate(b)

	s2, _ := b.start(t, rec)
	waitStreaming(t, s2)
	id := b.insert(t)
	pgtest.WaitFor(t, 5*time.Second, "a row through the new slot", func() bool { return rec.has(id) })
	b.loggedOnce(t, "replication slot was invalidated")
	if !strings.Contains(b.logs.String(), "reason="+reason) {
		t.Errorf("the invalidation's log does not give its reason (reason=%s)", reason)
	}
}

// pgoutput's warning for a publication missing at a point of the WAL
// (PostgreSQL 18+) is known by its routine, whatever its language; other
// warnings with its general SQLSTATE, and errors, are not it.
func TestPublicationSkipped(t *testing.T) {
	skipped := &pgconn.PgError{SeverityUnlocalized: "WARNING", Code: "55000", Routine: "LoadPublications", Message: "publication « outbox_relay » ignorée"}
	if !publicationSkipped(fmt.Errorf("replication stream: %w", skipped)) {
		t.Error("pgoutput's warning for a skipped publication is not recognised")
	}
	for _, other := range []*pgconn.PgError{
		{SeverityUnlocalized: "WARNING", Code: "55000", Routine: "ReplicationSlotAcquire"},
		{SeverityUnlocalized: "ERROR", Code: "55000", Routine: "LoadPublications"},
		{SeverityUnlocalized: "WARNING", Code: "42704", Routine: "LoadPublications"},
	} {
		if publicationSkipped(other) {
			t.Errorf("%+v taken for a skipped publication", other)
		}
	}
}

// On PostgreSQL 17 and newer the slot is made with failover = true, so
// that standbys with sync_replication_slots keep it.
func TestSlotIsFailoverOn17(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var version int
	if err := b.pool.QueryRow(context.Background(), `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
		t.Fatal(err)
	}
	if version < 170000 {
		t.Skipf("server_version_num %d: slots have a failover flag from PostgreSQL 17 on; no 17 server here", version)
	}
	s, _ := b.start(t, newRecorder())
	waitStreaming(t, s)
	var failover bool
	if err := b.pool.QueryRow(context.Background(), `SELECT failover FROM pg_replication_slots WHERE slot_name = $1`, b.cfg.Slot).Scan(&failover); err != nil {
		t.Fatal(err)
	}
	if !failover {
		t.Error("the slot was created with failover = false on PostgreSQL 17+")
	}
}

func TestStartFrom(t *testing.T) {
	t.Parallel()
	lsn, err := pglogrepl.ParseLSN(goodSlot.ConfirmedFlushLSN)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		edit   func(*store.Slot)
		broken bool
		want   startPoint
		err    string
	}{
		{"no slot: make it", func(sl *store.Slot) { *sl = store.Slot{Name: sl.Name} }, false, startPoint{create: true}, ""},
		{"no slot, broken: make it", func(sl *store.Slot) { *sl = store.Slot{Name: sl.Name} }, true, startPoint{create: true}, ""},
		{"from the confirmed position", func(*store.Slot) {}, false, startPoint{lsn: lsn}, ""},
		{"invalidated: drop and make again", func(sl *store.Slot) { sl.WALStatus = "lost" }, false, startPoint{create: true, drop: true}, ""},
		{"broken: drop and make again", func(*store.Slot) {}, true, startPoint{create: true, drop: true}, ""},
		{"another plugin", func(sl *store.Slot) { sl.Plugin = "test_decoding" }, false, startPoint{},
			"slot outbox_relay exists but is not a pgoutput logical slot of database app (logical, test_decoding, app); drop it or set RELAY_SLOT_NAME"},
		{"a bad position", func(sl *store.Slot) { sl.ConfirmedFlushLSN = "nonsense" }, false, startPoint{}, "confirmed_flush_lsn"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sl := goodSlot
			tc.edit(&sl)
			got, err := startFrom(sl, tc.broken)
			wantErr(t, err, tc.err)
			if got != tc.want {
				t.Errorf("start point %+v, want %+v", got, tc.want)
			}
		})
	}
}

// A slot held by another process makes a standby, naming the holder.
func TestStartFromActiveSlotStandsBy(t *testing.T) {
	t.Parallel()
	sl := goodSlot
	sl.Active, sl.ActivePID = true, 4242
	_, err := startFrom(sl, true)
	var sb *errStandby
	if !errors.As(err, &sb) || sb.pid != 4242 {
		t.Fatalf("error %v, want errStandby for pid 4242", err)
	}
	if want := "replication slot is in use by another process (pid 4242)"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

func TestSlotDroppedExternallyIsRecreated(t *testing.T) {
	t.Parallel()
	b, rec, s := streamingAt(t, pgtest.NewDB(t))

	// As an operator (or the slot guard) would: stop the walsender, then
	// drop the slot before the relay takes it again.
	ctx := context.Background()
	if err := store.DropSlot(ctx, b.pool, b.cfg.Slot); err != nil {
		t.Fatal(err)
	}

	pgtest.WaitFor(t, 15*time.Second, "the slot to be recreated and streamed from", func() bool {
		slot, err := store.SlotInfo(ctx, b.pool, b.cfg.Slot)
		return err == nil && slot.Active && s.Streaming()
	})
	second := b.insert(t)
	pgtest.WaitFor(t, 5*time.Second, "a row after recovery", func() bool { return rec.has(second) })
	b.loggedOnce(t, "replication stream down")
}

func TestPublicationDroppedIsRecreated(t *testing.T) {
	t.Parallel()
	b, rec, _ := streamingAt(t, pgtest.NewDB(t))

	b.exec(t, `DROP PUBLICATION `+b.cfg.Publication)
	// Rows inserted before the stream is back are the sweeper's; the
	// stream must come back for the rows after. Insert now and then until
	// one comes through.
	var ids []string
	var last time.Time
	pgtest.WaitFor(t, 20*time.Second, "a row after the publication came back", func() bool {
		if time.Since(last) > 50*time.Millisecond {
			ids, last = append(ids, b.insert(t)), time.Now()
		}
		for _, id := range ids {
			if rec.has(id) {
				return true
			}
		}
		return false
	})
	b.loggedOnce(t, "lost its publication")
}

// The session reads the server's major version from server_version; it
// decides whether the slot is made with FAILOVER.
func TestMajorVersion(t *testing.T) {
	for v, want := range map[string]int{"15.8 (Debian 15.8-0+deb12u1)": 15, "17.2": 17, "18beta1": 18, "": 0, "x": 0} {
		if got := store.MajorVersion(v); got != want {
			t.Errorf("MajorVersion(%q) = %d, want %d", v, got, want)
		}
	}
}
