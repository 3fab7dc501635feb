package cdc

import (
	"context"
	"strings"
	"testing"
	"time"

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
	if n := strings.Count(b.logs.String(), "replication slot was invalidated"); n != 1 {
		t.Errorf("logged the invalidation %d times, want once", n)
	}
	if !strings.Contains(b.logs.String(), "reason="+reason) {
		t.Errorf("the invalidation's log does not give its reason (reason=%s)", reason)
	}
}

// exec runs statements on the bundle's pool, failing the test on an error.
func (b *bundle) exec(t *testing.T, statements ...string) {
	t.Helper()
	for _, sql := range statements {
		if _, err := b.pool.Exec(context.Background(), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
}
