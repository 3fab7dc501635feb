package faults

import (
	"context"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// Replicas with other settings share a table: one streams, one only
// sweeps (RELAY_CDC=off, a short interval, fewer workers), and some rows
// come in already tried (an application re-inserting a failed event). No
// event is sent by two of them: every path that takes a row leaves the
// stream's fresh rows alone, whatever the replica's settings.
func TestReplicasWithOtherSettings(t *testing.T) {
	d, rn := fresh(t)
	s := newSenders(rn, nil)
	tag, _ := s.tag()
	startRelay(t, relayEnv(d, rn, "RELAY_CDC=on", tag))
	tag, _ = s.tag()
	startRelay(t, relayEnv(d, rn, "RELAY_CDC=off", "RELAY_SWEEP_INTERVAL=100ms", "RELAY_CONCURRENCY=4", tag))

	events := scale(600, 3000)
	in := startInserter(t, d, 200, 4)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	retried := make(chan int)
	go func() {
		n := 0
		defer func() { retried <- n }()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if _, err := d.pool.Exec(ctx, `INSERT INTO portal_event_outbox (event_type, payload, attempts)
				VALUES ('fault.reinserted', '{}', 2)`); err == nil {
				n++
			}
		}
	}()
	pgtest.WaitFor(t, 5*time.Minute, "the inserts", func() bool { return in.count() >= events })
	in.stop()
	cancel()
	t.Logf("%d rows inserted already tried", <-retried)
	r := verify(t, d, rn, 2*time.Minute)
	if r.Duplicates != 0 {
		t.Errorf("%d of %d events accepted twice with a streaming and a sweep-only replica, want 0", r.Duplicates, r.Events)
	}
	for _, o := range s.outsideWindow() {
		t.Errorf("outside the crash window: %s", o)
	}
	record(t, "replicas with other settings", r, nil)
}
