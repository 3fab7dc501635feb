package faults

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/relay"
)

// The runner goes down (every connection reset at once, and counted) for
// a long outage while 100 events/s are inserted, with
// RELAY_MAX_ATTEMPTS=3: no row may die of it, the down runner gets a probe
// now and then rather than a request per due row, and on its return the
// backlog drains at once.
func TestRunnerDownNoDeadLetters(t *testing.T) {
	d, rn := fresh(t)
	addr := freeAddr(t)
	env := relayEnv(d, rn, "RELAY_MAX_ATTEMPTS=3", "RELAY_LISTEN_ADDR="+addr)
	startRelay(t, env)
	in := startInserter(t, d, 100, 2)
	pgtest.WaitFor(t, 30*time.Second, "the first deliveries", func() bool { return len(rn.Accepted()) > 50 })

	outage := time.Duration(scale(5, 120)) * time.Second
	// settle is how long the breaker may take to open: the requests of
	// the first wave fail within it.
	const settle = 3 * time.Second
	if err := rn.Refuse(context.Background()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var atSettle, peakPerSecond, last int64
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for time.Since(start) < outage {
		<-tick.C
		n := rn.Refused()
		if time.Since(start) > settle {
			peakPerSecond = max(peakPerSecond, n-last)
			if atSettle == 0 {
				atSettle = n
			}
		}
		last = n
	}
	// Seen by operators: /readyz, status.
	if s := readiness(t, addr).Runner; s == nil || s.State == relay.RunnerClosed {
		t.Errorf("/readyz runner = %+v during the outage, want open or probing", s)
	}
	if code, out := runOnce(t, append(env, "RELAY_LOG_LEVEL=warn"), "status"); code != 1 || !strings.Contains(out, "the runner is down") {
		t.Errorf("status during the outage: exit %d\n%s", code, out)
	}
	total := rn.Refused()
	if dead := d.count(t, "status = 'dead'"); dead != 0 {
		t.Errorf("%d rows dead of the outage, want 0", dead)
	}
	steady := float64(total-atSettle) / (outage - settle).Seconds()
	if steady > 2 {
		t.Errorf("the down runner got %.1f connections a second once the breaker was open, want at most 2", steady)
	}

	restartRunner(t, rn)
	back := time.Now()
	in.stop()
	pgtest.WaitFor(t, 2*time.Minute, "the backlog to drain", func() bool { return d.count(t, "status <> 'delivered'") == 0 })
	var drain float64
	if err := d.pool.QueryRow(context.Background(), `SELECT extract(epoch FROM max(delivered_at) - $1::timestamptz)::float8
		FROM portal_event_outbox`, back).Scan(&drain); err != nil {
		t.Fatal(err)
	}
	r := verify(t, d, rn, time.Minute)
	dead := d.count(t, "status = 'dead'")
	if dead != 0 {
		t.Errorf("%d rows dead, want 0", dead)
	}
	var maxAttempts int
	_ = d.pool.QueryRow(context.Background(), `SELECT max(attempts) FROM portal_event_outbox`).Scan(&maxAttempts)
	t.Logf("outage %s: %d connections reached the down runner (%d in the first %s, %.2f/s after, at most %d in a second); drained %.1f s after its return; max attempts %d",
		outage, total, atSettle, settle, steady, peakPerSecond, drain, maxAttempts)
	record(t, "runner down (breaker)", r, map[string]string{
		"outage":              outage.String(),
		"max_attempts":        "3",
		"dead":                fmt.Sprint(dead),
		"conns_to_down":       fmt.Sprint(total),
		"conns_first_3s":      fmt.Sprint(atSettle),
		"conns_per_s_after":   fmt.Sprintf("%.2f", steady),
		"conns_peak_per_s":    fmt.Sprint(peakPerSecond),
		"drain_s":             fmt.Sprintf("%.1f", drain),
		"max_attempts_of_row": fmt.Sprint(maxAttempts),
	})
}

// A runner that answers 429 with Retry-After: 1 to every second request:
// everything is delivered, nothing dies (RELAY_MAX_ATTEMPTS=3: counted,
// one row in eight would have).
func TestRunnerThrottles(t *testing.T) {
	d, rn := fresh(t)
	var n, throttled atomic.Int64
	rn.SetAnswer(func(w http.ResponseWriter, _ *http.Request, _ []byte) bool {
		if n.Add(1)%2 == 0 {
			throttled.Add(1)
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return false
		}
		w.WriteHeader(http.StatusNoContent)
		return true
	})
	startRelay(t, relayEnv(d, rn, "RELAY_MAX_ATTEMPTS=3"))
	events := scale(300, 1500)
	start := time.Now()
	in := startInserter(t, d, 100, 2)
	pgtest.WaitFor(t, 2*time.Minute, "the inserts", func() bool { return in.count() >= events })
	in.stop()
	r := verify(t, d, rn, 5*time.Minute)
	took := time.Since(start)
	dead := d.count(t, "status = 'dead'")
	if dead != 0 {
		t.Errorf("%d rows dead, want 0", dead)
	}
	t.Logf("%d events, %d requests, %d answered 429, all delivered %s after the first insert", r.Events, n.Load(), throttled.Load(), took.Round(time.Second))
	record(t, "runner throttles (429, Retry-After 1, every second request)", r, map[string]string{
		"dead":       fmt.Sprint(dead),
		"requests":   fmt.Sprint(n.Load()),
		"throttled":  fmt.Sprint(throttled.Load()),
		"took_s":     fmt.Sprintf("%.0f", took.Seconds()),
		"events_per": fmt.Sprintf("%.0f/s", float64(r.Events)/took.Seconds()),
	})
}
