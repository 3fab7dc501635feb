package monitor_test

import (
	"context"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/monitor"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// Past the maximum, the guard drops the slot; under it, it leaves it.
func TestSlotGuardDropsAnOverLimitSlot(t *testing.T) {
	t.Parallel()
	st := relaytest.NewStore(t)
	ctx := context.Background()
	slot := "guard_test_slot"
	if _, err := st.Pool().Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = store.DropSlot(ctx, st.Pool(), slot)
	})
	// Write some WAL so the slot retains more than the tiny limit.
	if _, err := st.Pool().Exec(ctx, `CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g`); err != nil {
		t.Fatal(err)
	}
	m := monitor.NewMetrics()
	under := monitor.NewWatcher(monitor.WatchConfig{Interval: time.Hour, Slot: slot, SlotWarnBytes: 1 << 40, SlotMaxBytes: 1 << 40}, st, m, quiet)
	if s := under.RunOnce(ctx); s.Err != "" || s.Slot == nil || !s.Slot.Exists || s.Slot.RetainedBytes < 1<<20 {
		t.Fatalf("slot under the limit: %+v", s)
	}
	over := monitor.NewWatcher(monitor.WatchConfig{Interval: time.Hour, Slot: slot, SlotWarnBytes: 1024, SlotMaxBytes: 4096}, st, m, quiet)
	if s := over.RunOnce(ctx); s.Err != "" {
		t.Fatalf("guard: %s", s.Err)
	}
	sl, err := store.SlotInfo(ctx, st.Pool(), slot)
	if err != nil || sl.Exists {
		t.Errorf("slot after the guard: %+v, %v; want dropped", sl, err)
	}
	srvURL := serve(t, st, m, over)
	if _, scrape := get(t, srvURL+"/metrics"); metric(t, scrape, "outbox_relay_slot_recreated_total") != 1 {
		t.Error("slot_recreated_total not counted")
	}
}
