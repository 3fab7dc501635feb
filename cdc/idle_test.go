package cdc

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// On PostgreSQL 18 a slot no one streams from for idle_replication_slot_timeout
// is invalidated at the next checkpoint. The stream makes a new slot and a
// row inserted after it arrives: the old slot's position is all that is
// lost (the sweeper delivers the rows of the gap).
func TestIdleInvalidatedSlotIsRecreated(t *testing.T) {
	pgtest.SkipBelow(t, 18, "idle_replication_slot_timeout invalidates idle slots from 18 on")
	t.Parallel()
	c := pgtest.StartT(t)
	b := setupURL(t, c.URL("postgres"))
	rec := newRecorder()
	s, stop := b.start(t, rec)
	waitStreaming(t, s)
	stop()

	ctx := context.Background()
	for _, sql := range []string{
		`ALTER SYSTEM SET idle_replication_slot_timeout = '1s'`,
		`SELECT pg_reload_conf()`,
	} {
		if _, err := b.pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	pgtest.WaitFor(t, 30*time.Second, "the idle slot to be invalidated", func() bool {
		if _, err := b.pool.Exec(ctx, `CHECKPOINT`); err != nil {
			t.Fatal(err)
		}
		var reason string
		err := b.pool.QueryRow(ctx, `SELECT coalesce(invalidation_reason, '') FROM pg_replication_slots WHERE slot_name = $1`, b.cfg.Slot).Scan(&reason)
		return err == nil && reason == "idle_timeout"
	})
	if slot, err := store.SlotInfo(ctx, b.pool, b.cfg.Slot); err != nil || slot.WALStatus != "lost" {
		t.Fatalf("the idle-invalidated slot reads wal_status %q (%v); the stream recreates a slot whose wal_status is lost", slot.WALStatus, err)
	}
	// The new slot idles between the stream's sessions too: a timeout of
	// a second would invalidate it again while the test runs.
	for _, sql := range []string{`ALTER SYSTEM RESET idle_replication_slot_timeout`, `SELECT pg_reload_conf()`} {
		if _, err := b.pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}

	s2, _ := b.start(t, rec)
	waitStreaming(t, s2)
	id := b.insert(t)
	pgtest.WaitFor(t, 5*time.Second, "a row through the new slot", func() bool { return rec.has(id) })
	if n := strings.Count(b.logs.String(), "replication slot was invalidated"); n != 1 {
		t.Errorf("logged the invalidation %d times, want once", n)
	}
	if !strings.Contains(b.logs.String(), "reason=idle_timeout") {
		t.Error("the invalidation's log does not say the slot idled past its timeout (reason=idle_timeout)")
	}
}
