package monitor_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/monitor"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/internal/store"
	"github.com/outbox-relay/outbox-relay/relay"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// runnerDown stands for a deliverer whose writes all succeed and whose
// runner is down.
type runnerDown struct{}

func (runnerDown) WriteErrors() []relay.WriteError { return nil }
func (runnerDown) Runner() relay.RunnerState {
	return relay.RunnerState{State: relay.RunnerOpen, ConcurrencyLimit: 2, LastError: "runner unreachable"}
}

func serve(t *testing.T, st *store.Store, m *monitor.Metrics, w *monitor.Watcher) string {
	t.Helper()
	srv, err := monitor.NewServer("127.0.0.1:0", st.Pool(), m, w, runnerDown{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	return "http://" + srv.Addr()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric returns the value of one sample line of a scrape.
func metric(t *testing.T, scrape, sample string) float64 {
	t.Helper()
	for _, line := range strings.Split(scrape, "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("no sample %s in the scrape", sample)
	return 0
}

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
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() { cancel(); <-done }()

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

// /readyz answers 503 while the database is down and 200 again after.
func TestReadyzFollowsTheDatabase(t *testing.T) {
	t.Parallel()
	c := pgtest.StartT(t)
	st := relaytest.StoreAt(t, c.URL("postgres"))
	m := monitor.NewMetrics()
	w := monitor.NewWatcher(monitor.WatchConfig{Interval: time.Hour, CDC: func() monitor.CDCState {
		return monitor.CDCState{Enabled: true, Connected: true, Role: "streamer"}
	}}, st, m, quiet)
	w.RunOnce(context.Background())
	base := serve(t, st, m, w)

	code, body := get(t, base+"/readyz")
	if code != 200 || !strings.Contains(body, `"ready":true`) || !strings.Contains(body, `"role":"streamer"`) {
		t.Fatalf("readyz with the database up: %d %s", code, body)
	}
	// A runner that is down shows, and leaves the relay ready.
	if !strings.Contains(body, `"runner":{"state":"open"`) || !strings.Contains(body, `"concurrency_limit":2`) {
		t.Errorf("readyz does not show the runner's state: %s", body)
	}
	if err := c.StopServer("fast"); err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, `"ready":false`) {
		t.Errorf("readyz with the database down: %d %s", code, body)
	}
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("healthz with the database down: %d, want 200 (the process is alive)", code)
	}
	if err := c.StartServer(); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, 20*time.Second, "readyz to recover", func() bool {
		code, _ := get(t, base+"/readyz")
		return code == 200
	})
}

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

// cdc_enabled follows the stream: 0 while the server cannot stream (the
// relay is sweep-only, so no alert should wait for a slot), 1 once it can.
func TestCDCEnabledFollowsTheStream(t *testing.T) {
	t.Parallel()
	st := relaytest.NewStore(t)
	m := monitor.NewMetrics()
	var mu sync.Mutex
	state := monitor.CDCState{Role: "unavailable"}
	cdc := func() monitor.CDCState { mu.Lock(); defer mu.Unlock(); return state }
	m.WatchCDC(cdc)
	w := monitor.NewWatcher(monitor.WatchConfig{Interval: time.Hour, CDC: cdc}, st, m, quiet)
	base := serve(t, st, m, w)
	for _, want := range []string{"0", "1"} {
		w.RunOnce(context.Background())
		if _, body := get(t, base+"/metrics"); !strings.Contains(body, "\noutbox_relay_cdc_enabled "+want+"\n") ||
			!strings.Contains(body, `outbox_relay_cdc_role{role="`+state.Role+`"} 1`) {
			t.Errorf("with role %s, want cdc_enabled %s and the role's gauge at 1:\n%s", state.Role, want, body)
		}
		mu.Lock()
		state = monitor.CDCState{Enabled: true, Connected: true, Role: "streamer"}
		mu.Unlock()
	}
}
