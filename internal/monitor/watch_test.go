package monitor_test

import (
	"context"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/monitor"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// droppingGuard drops nothing but says it did, recording the slots it
// was shown.
type droppingGuard struct{ seen []store.Slot }

func (g *droppingGuard) Check(_ context.Context, slot store.Slot) (bool, error) {
	g.seen = append(g.seen, slot)
	return true, nil
}

// The watcher hands the slot's figures to the guard at each refresh and
// counts the drops it reports.
func TestWatcherGuardsTheSlot(t *testing.T) {
	t.Parallel()
	st := relaytest.NewStore(t)
	ctx := context.Background()
	slot := "guard_test_slot"
	if _, err := st.Pool().Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.DropSlot(ctx, st.Pool(), slot) })
	m := monitor.NewMetrics()
	g := &droppingGuard{}
	w := monitor.NewWatcher(monitor.WatchConfig{Interval: time.Hour, Slot: slot, Guard: g}, st, m, quiet)
	if s := w.RunOnce(ctx); s.Err != "" || s.Slot == nil || !s.Slot.Exists {
		t.Fatalf("snapshot: %+v", s)
	}
	if len(g.seen) != 1 || g.seen[0].Name != slot || !g.seen[0].Exists {
		t.Fatalf("the guard saw %+v, want slot %s once", g.seen, slot)
	}
	srvURL := serve(t, st, m, w)
	if _, scrape := get(t, srvURL+"/metrics"); metric(t, scrape, "outbox_relay_slot_recreated_total") != 1 {
		t.Error("slot_recreated_total not counted")
	}
}
