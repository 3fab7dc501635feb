package monitor_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/monitor"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/relay"
)

// Deliveries, retries and dead letters show up on the real endpoint with
// the right values, and the SQL gauges after a refresh.
func TestMetricsAfterDeliveries(t *testing.T) {
	t.Parallel()
	st := relaytest.NewStore(t)
	rn := relaytest.NewRunner(t)
	rn.SetAnswer(relaytest.AnswerBy(func(_ *http.Request, e relaytest.Event) int {
		switch e.Type {
		case "retry":
			return http.StatusServiceUnavailable
		case "dead":
			return http.StatusBadRequest
		}
		return http.StatusNoContent
	}))
	m := monitor.NewMetrics()
	d := relay.New(relay.Config{RunnerURL: rn.URL(), HTTPTimeout: 5 * time.Second, Concurrency: 4, MaxAttempts: 5,
		Backoff: relay.Backoff{Base: time.Hour, Max: time.Hour}, ShutdownGrace: time.Second}, st, quiet, m)
	m.WatchRunner(d.Runner)
	run(t, "deliverer", d.Run)

	relaytest.Insert(t, st, 3, "ok")
	relaytest.Insert(t, st, 1, "retry")
	relaytest.Insert(t, st, 1, "dead")
	if _, err := d.DeliverDue(context.Background(), 10, 0); err != nil {
		t.Fatal(err)
	}
	w := monitor.NewWatcher(monitor.WatchConfig{Interval: time.Hour}, st, m, quiet)
	base := serve(t, st, m, w)
	var scrape string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last scrape:\n%s", scrape)
		}
	})
	pgtest.WaitFor(t, 20*time.Second, "the deliveries to be counted", func() bool {
		_, scrape = get(t, base+"/metrics")
		return strings.Contains(scrape, `outbox_relay_deliveries_total{outcome="delivered",path="sweep"} 3`) &&
			strings.Contains(scrape, `outbox_relay_deliveries_total{outcome="retry",path="sweep"} 1`) &&
			strings.Contains(scrape, `outbox_relay_deliveries_total{outcome="dead",path="sweep"} 1`)
	})
	if n := metric(t, scrape, "outbox_relay_runner_request_duration_seconds_count"); n != 5 {
		t.Errorf("request duration count = %v, want 5", n)
	}
	if n := metric(t, scrape, "outbox_relay_event_age_seconds_count"); n != 3 {
		t.Errorf("event age count = %v, want 3", n)
	}
	// Wait for the outcomes to be written, then refresh the SQL gauges.
	pgtest.WaitFor(t, 20*time.Second, "the outcomes to be recorded", func() bool {
		s := w.RunOnce(context.Background())
		return s.Stats.Dead == 1 && s.Stats.Pending == 1
	})
	_, scrape = get(t, base+"/metrics")
	for sample, want := range map[string]float64{
		"outbox_relay_pending_rows":                  1,
		"outbox_relay_dead_rows":                     1,
		`outbox_relay_runner_state{state="closed"}`:  1,
		`outbox_relay_runner_state{state="open"}`:    0,
		`outbox_relay_runner_state{state="probing"}`: 0,
	} {
		if got := metric(t, scrape, sample); got != want {
			t.Errorf("%s = %v, want %v", sample, got, want)
		}
	}
	// Halved to 2 by the 503, grown back by one per run of successes.
	if l := metric(t, scrape, "outbox_relay_runner_concurrency_limit"); l < 2 || l > 3 {
		t.Errorf("concurrency limit = %v, want 2 or 3 after a 503 (of 4)", l)
	}
	if age := metric(t, scrape, "outbox_relay_oldest_pending_age_seconds"); age <= 0 {
		t.Errorf("oldest pending age = %v, want > 0", age)
	}
}

// cdc_enabled follows the stream: 0 while the server cannot stream (the
// relay is sweep-only, so no alert should wait for a slot), 1 once it can.
func TestCDCEnabledFollowsTheStream(t *testing.T) {
	t.Parallel()
	st := relaytest.NewStore(t)
	m := monitor.NewMetrics()
	var state atomic.Pointer[monitor.CDCState] // read by the server's scrapes
	state.Store(&monitor.CDCState{Role: "unavailable"})
	cdc := func() monitor.CDCState { return *state.Load() }
	m.WatchCDC(cdc)
	w := monitor.NewWatcher(monitor.WatchConfig{Interval: time.Hour, CDC: cdc}, st, m, quiet)
	base := serve(t, st, m, w)
	for _, want := range []string{"0", "1"} {
		w.RunOnce(context.Background())
		if _, body := get(t, base+"/metrics"); !strings.Contains(body, "\noutbox_relay_cdc_enabled "+want+"\n") ||
			!strings.Contains(body, `outbox_relay_cdc_role{role="`+cdc().Role+`"} 1`) {
			t.Errorf("with role %s, want cdc_enabled %s and the role's gauge at 1:\n%s", cdc().Role, want, body)
		}
		state.Store(&monitor.CDCState{Enabled: true, Connected: true, Role: "streamer"})
	}
}
