package faults

import (
	"context"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

// On PostgreSQL 16 and later the relay's outcome writes carry a
// replication origin and the stream asks not to receive such changes: the
// walsender decodes the application's transactions and not the relay's.
func TestOwnWritesAreNotStreamed(t *testing.T) {
	d := newDB(t, pgtest.NewDB(t))
	ctx := context.Background()
	var version int
	if err := d.pool.QueryRow(ctx, `SELECT current_setting('server_version_num')::int / 10000`).Scan(&version); err != nil {
		t.Fatal(err)
	}
	if version < 16 {
		t.Skipf("PostgreSQL %d cannot filter changes by origin (16 and later can)", version)
	}
	rn := relaytest.NewRunner(t)
	_, url := withMetrics(t, d, rn, "RELAY_CDC=on", "RELAY_SWEEP_INTERVAL=1m")
	pgtest.WaitFor(t, 30*time.Second, "the stream", func() bool { return streaming(url) })

	decoded := func() (n int) {
		if err := d.pool.QueryRow(ctx, `SELECT coalesce((SELECT total_txns FROM pg_stat_replication_slots
			WHERE slot_name = 'outbox_relay'), 0)`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := decoded()
	// One event at a time, so that each outcome is a transaction of its own.
	const events = 100
	for i := range events {
		insertRows(t, d, `INSERT INTO portal_event_outbox (event_type) VALUES ('one')`)
		pgtest.WaitFor(t, 10*time.Second, "the event's outcome", func() bool {
			return d.count(t, "status = 'delivered'") == i+1
		})
	}
	// The walsender reports its figures now and then: wait for the inserts.
	pgtest.WaitFor(t, 30*time.Second, "the slot's figures", func() bool { return decoded()-before >= events })
	if n := decoded() - before; n > events+events/4 {
		t.Errorf("the walsender decoded %d transactions for %d single-row inserts and their outcomes, want about %d", n, events, events)
	}
}
