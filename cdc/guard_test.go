package cdc

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// Past the maximum, the guard drops the slot; under it, it leaves it and
// warns once past the warning threshold.
func TestGuardDropsAnOverLimitSlot(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	if _, err := b.pool.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, b.cfg.Slot); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.DropSlot(context.Background(), b.pool, b.cfg.Slot) })
	// Write some WAL so the slot retains more than the tiny limit.
	if _, err := b.pool.Exec(ctx, `CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g`); err != nil {
		t.Fatal(err)
	}
	slot, err := store.SlotInfo(ctx, b.pool, b.cfg.Slot)
	if err != nil || !slot.Exists || slot.RetainedBytes < 1<<20 {
		t.Fatalf("slot: %+v, %v", slot, err)
	}
	var logs relaytest.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	under := NewGuard(GuardConfig{Slot: b.cfg.Slot, WarnBytes: 1 << 20, MaxBytes: 1 << 40}, b.pool, log)
	for range 2 {
		if dropped, err := under.Check(ctx, slot); dropped || err != nil {
			t.Fatalf("under the limit: dropped %t, %v", dropped, err)
		}
	}
	if got := logs.String(); strings.Count(got, "replication slot retains a lot of WAL") != 1 {
		t.Errorf("want one warning past the threshold, logs:\n%s", got)
	}

	over := NewGuard(GuardConfig{Slot: b.cfg.Slot, WarnBytes: 1024, MaxBytes: 4096}, b.pool, log)
	if dropped, err := over.Check(ctx, slot); !dropped || err != nil {
		t.Fatalf("over the limit: dropped %t, %v", dropped, err)
	}
	if sl, err := store.SlotInfo(ctx, b.pool, b.cfg.Slot); err != nil || sl.Exists {
		t.Errorf("slot after the guard: %+v, %v; want dropped", sl, err)
	}
}
