package faults

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

// withMetrics starts a relay that serves /metrics and returns its URL.
func withMetrics(t *testing.T, d *db, rn *relaytest.Runner, extra ...string) (*relaytest.Process, string) {
	addr := freeAddr(t)
	p := startRelay(t, relayEnv(d, rn, append([]string{"RELAY_LISTEN_ADDR=" + addr}, extra...)...))
	url := "http://" + addr + "/metrics"
	pgtest.WaitFor(t, 30*time.Second, "the metrics endpoint", func() bool { _, err := scrape(url, "go_goroutines"); return err == nil })
	return p, url
}

func streaming(url string) bool {
	v, err := scrape(url, `outbox_relay_cdc_role{role="streamer"}`)
	return err == nil && v == 1
}

func insertRows(t *testing.T, d *db, sql string) {
	t.Helper()
	if _, err := d.pool.Exec(context.Background(), sql); err != nil {
		t.Fatal(err)
	}
}

// With a minute between sweeps only the stream can deliver quickly: rows
// committed while it streams arrive by the stream path, a rolled-back
// transaction delivers nothing, a multi-row one all its rows.
func TestStreamDelivers(t *testing.T) {
	d, rn := fresh(t)
	_, url := withMetrics(t, d, rn, "RELAY_SWEEP_INTERVAL=1m")
	pgtest.WaitFor(t, 30*time.Second, "the stream", func() bool { return streaming(url) })

	insertRows(t, d, `INSERT INTO portal_event_outbox (event_type) VALUES ('one')`)
	insertRows(t, d, `BEGIN; INSERT INTO portal_event_outbox (event_type) VALUES ('rolled back'); ROLLBACK`)
	insertRows(t, d, `INSERT INTO portal_event_outbox (event_type) SELECT 'multi' FROM generate_series(1, 50)`)
	// Well before the next sweep (a minute away): the stream did it.
	pgtest.WaitFor(t, 20*time.Second, "stream delivery", func() bool { return d.count(t, "status = 'delivered'") == 51 })
	if n, _ := scrape(url, `outbox_relay_deliveries_total{outcome="delivered",path="stream"}`); n != 51 {
		t.Errorf("%v deliveries by the stream, want 51", n)
	}
	if n := len(rn.Accepted()); n != 51 {
		t.Errorf("runner got %d events, want 51 (nothing from the rolled-back transaction)", n)
	}
}

// Killed and restarted: rows inserted while it was down are delivered.
func TestStreamAfterKill(t *testing.T) {
	d, rn := fresh(t)
	p, url := withMetrics(t, d, rn, "RELAY_SWEEP_INTERVAL=1m")
	pgtest.WaitFor(t, 30*time.Second, "the stream", func() bool { return streaming(url) })
	p.Kill()
	insertRows(t, d, `INSERT INTO portal_event_outbox (event_type) SELECT 'while down' FROM generate_series(1, 20)`)
	_, url = withMetrics(t, d, rn, "RELAY_SWEEP_INTERVAL=1m")
	insertRows(t, d, `INSERT INTO portal_event_outbox (event_type) SELECT 'after' FROM generate_series(1, 20)`)
	r := verify(t, d, rn, 30*time.Second)
	if r.Events != 40 || r.Duplicates != 0 {
		t.Errorf("%+v, want 40 events and no duplicates", r)
	}
}

// Two relays: one streams, the other stands by; kill the streamer and the
// other takes the slot.
func TestStandbyTakesOver(t *testing.T) {
	d, rn := fresh(t)
	first, firstURL := withMetrics(t, d, rn, "RELAY_SWEEP_INTERVAL=1m")
	pgtest.WaitFor(t, 30*time.Second, "the first to stream", func() bool { return streaming(firstURL) })
	_, secondURL := withMetrics(t, d, rn, "RELAY_SWEEP_INTERVAL=1m")
	pgtest.WaitFor(t, 30*time.Second, "the second to stand by", func() bool {
		v, err := scrape(secondURL, `outbox_relay_cdc_role{role="standby"}`)
		return err == nil && v == 1
	})
	first.Kill()
	pgtest.WaitFor(t, 60*time.Second, "the standby to take the slot", func() bool { return streaming(secondURL) })
	insertRows(t, d, `INSERT INTO portal_event_outbox (event_type) SELECT 'x' FROM generate_series(1, 10)`)
	pgtest.WaitFor(t, 20*time.Second, "delivery by the new streamer", func() bool {
		n, _ := scrape(secondURL, `outbox_relay_deliveries_total{outcome="delivered",path="stream"}`)
		return n == 10
	})
}

// Without logical replication: RELAY_CDC=on refuses to start with the
// reason; auto warns and delivers sweep-only.
func TestWithoutLogicalReplication(t *testing.T) {
	c := pgtest.StartT(t, pgtest.WithWalLevel("replica"))
	d := newDB(t, c.URL("postgres"))
	rn := relaytest.NewRunner(t)
	code, out := runOnce(t, relayEnv(d, rn, "RELAY_CDC=on"))
	if code != 2 || !strings.Contains(out, "wal_level") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Errorf("RELAY_CDC=on on wal_level=replica: exit %d, want 2 and one line naming wal_level:\n%s", code, out)
	}
	p := startRelay(t, relayEnv(d, rn, "RELAY_CDC=auto"))
	insertRows(t, d, `INSERT INTO portal_event_outbox (event_type) SELECT 'x' FROM generate_series(1, 5)`)
	verify(t, d, rn, 30*time.Second)
	// The stream decides on its own, after its first attempt: wait for it.
	pgtest.WaitFor(t, 30*time.Second, "RELAY_CDC=auto to say why it runs sweep-only", func() bool {
		return strings.Contains(p.Logs(), "wal_level")
	})
	if n := strings.Count(p.Logs(), "logical replication is unavailable"); n != 1 {
		t.Errorf("said logical replication is unavailable %d times, want once", n)
	}
}

// Every WAL sender busy is a passing refusal, not a bad setting:
// RELAY_CDC=on starts, says why it does not stream yet, and streams once
// a sender is free.
func TestRelayCDCOnWaitsForAWALSender(t *testing.T) {
	const senders = 2
	c := pgtest.StartT(t, pgtest.WithSetting("max_wal_senders", fmt.Sprint(senders)))
	d := newDB(t, c.URL("postgres"))
	rn := relaytest.NewRunner(t)
	held := holdWALSenders(t, c.URL("postgres"), senders)
	p, url := withMetrics(t, d, rn, "RELAY_CDC=on", "RELAY_SWEEP_INTERVAL=1h")
	pgtest.WaitFor(t, 30*time.Second, "the relay to say why it does not stream yet", func() bool {
		return strings.Contains(p.Logs(), "not ready yet")
	})
	for _, conn := range held {
		conn.Close(context.Background()) //nolint:errcheck // the sender is freed either way
	}
	pgtest.WaitFor(t, 60*time.Second, "the stream once a WAL sender is free", func() bool { return streaming(url) })
	insertRows(t, d, `INSERT INTO portal_event_outbox (event_type) SELECT 'x' FROM generate_series(1, 5)`)
	pgtest.WaitFor(t, 20*time.Second, "delivery by the stream", func() bool {
		n, _ := scrape(url, `outbox_relay_deliveries_total{outcome="delivered",path="stream"}`)
		return n == 5
	})
}

// holdWALSenders opens n replication connections, each holding a WAL
// sender until the test ends or the caller closes it.
func holdWALSenders(t *testing.T, url string, n int) []*pgconn.PgConn {
	t.Helper()
	conns := make([]*pgconn.PgConn, n)
	for i := range conns {
		conns[i] = pgtest.ConnectReplication(t, url, "")
	}
	return conns
}

// With tiny thresholds the slot guard drops the slot as soon as it
// retains WAL; the stream recreates it and every row is still delivered.
func TestSlotGuardRecreatesTheSlot(t *testing.T) {
	d, rn := fresh(t)
	p, url := withMetrics(t, d, rn, "RELAY_SLOT_WARN_BYTES=1024", "RELAY_SLOT_MAX_BYTES=4096", "RELAY_STATS_INTERVAL=200ms")
	in := startInserter(t, d, 100, 2)
	pgtest.WaitFor(t, 60*time.Second, "the guard to drop the slot", func() bool {
		n, _ := scrape(url, "outbox_relay_slot_recreated_total")
		return n >= 2
	})
	pgtest.WaitFor(t, 60*time.Second, "the stream to come back", func() bool { return streaming(url) })
	in.stop()
	verify(t, d, rn, 60*time.Second)
	if logs := p.Logs(); !strings.Contains(logs, "dropping the replication slot") || !strings.Contains(logs, "retained_bytes") {
		t.Errorf("the guard did not log the drop with its figures:\n%s", relaytest.LastLines(logs, 20))
	}
}
