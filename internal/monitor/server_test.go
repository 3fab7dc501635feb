package monitor_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/monitor"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/internal/store"
	"github.com/outbox-relay/outbox-relay/relay"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var quiet = slog.New(slog.DiscardHandler)

// runnerDown stands for a deliverer whose writes all succeed and whose
// runner is down.
type runnerDown struct{}

func (runnerDown) WriteErrors() []relay.WriteError { return nil }
func (runnerDown) Runner() relay.RunnerState {
	return relay.RunnerState{State: relay.RunnerOpen, ConcurrencyLimit: 2, LastError: "runner unreachable"}
}

// run runs f until the end of the test, which fails if f returns an
// error; what names f in the failure.
func run(t *testing.T, what string, f func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", what, err)
		}
	})
}

// serve starts the monitor's server on a free port until the end of the
// test and returns its base URL.
func serve(t *testing.T, st *store.Store, m *monitor.Metrics, w *monitor.Watcher) string {
	t.Helper()
	srv, err := monitor.NewServer("127.0.0.1:0", st.Pool(), m, w, runnerDown{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	run(t, "server", srv.Run)
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
