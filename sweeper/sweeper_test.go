package sweeper_test

import (
	"context"
	"log/slog"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/internal/store"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/sweeper"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// testLog is a logger writing to the test's output, which shows when the
// test fails (or with -v): what the sweeper and the deliverer reported of
// the passes the test watched.
func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

type bundle struct {
	st *store.Store
	d  *relay.Deliverer
	rn *relaytest.Runner
}

// setup starts a Deliverer whose runner refuses the first `failures`
// attempts of each event.
func setup(t *testing.T, failures int) *bundle {
	t.Helper()
	b := &bundle{st: relaytest.NewStore(t), rn: relaytest.NewRunner(t)}
	b.rn.SetAnswer(relaytest.AnswerBy(func(_ *http.Request, e relaytest.Event) int {
		if e.Attempt <= failures {
			return http.StatusServiceUnavailable
		}
		return http.StatusNoContent
	}))
	b.d = relay.New(relay.Config{
		RunnerURL: b.rn.URL(), HTTPTimeout: 5 * time.Second, Concurrency: 4, MaxAttempts: 10,
		Backoff:       relay.Backoff{Base: 300 * time.Millisecond, Max: time.Second},
		ShutdownGrace: 5 * time.Second,
	}, b.st, testLog(t), nil)
	run(t, b.d.Run)
	return b
}

// run runs f until the end of the test.
func run(t *testing.T, f func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := f(ctx); err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// runOnce runs one pass of s and fails the test unless it claims want
// rows; when names the moment, for the failure line.
func runOnce(t *testing.T, s *sweeper.Sweeper, want int, when string) {
	t.Helper()
	if n, err := s.RunOnce(context.Background()); err != nil || n != want {
		t.Fatalf("%s: RunOnce = %d, %v; want %d", when, n, err, want)
	}
}

func count(t *testing.T, st *store.Store, status string) int {
	t.Helper()
	var n int
	if err := st.Pool().QueryRow(context.Background(), `SELECT count(*) FROM portal_event_outbox WHERE status = $1`, status).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// RunOnce claims batch after batch until the due rows are gone.
func TestRunOnceTakesEveryDueRow(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	relaytest.Insert(t, b.st, 250, "sweep")
	s := sweeper.New(sweeper.Config{Interval: time.Hour, BatchSize: 100}, b.d, b.st, testLog(t))
	runOnce(t, s, 250, "first")
	pgtest.WaitFor(t, 30*time.Second, "all delivered", func() bool { return count(t, b.st, "delivered") == 250 })
	runOnce(t, s, 0, "second")
}

// Fresh rows are left to the stream for the grace; retries are not.
func TestGraceLeavesFreshRowsToTheStream(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	relaytest.Insert(t, b.st, 3, "sweep")
	s := sweeper.New(sweeper.Config{Interval: time.Hour, BatchSize: 100, Grace: time.Hour}, b.d, b.st, testLog(t))
	runOnce(t, s, 0, "with a grace")
	if _, err := b.st.Pool().Exec(context.Background(), `UPDATE portal_event_outbox SET attempts = 1 WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	runOnce(t, s, 1, "with a retry due")
}

// With an hour between sweeps, a row whose first attempt failed is retried
// when its backoff ends: the sweeper wakes for it, not for the tick.
func TestRetryPickedUpOnTime(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	relaytest.Insert(t, b.st, 1, "sweep")
	s := sweeper.New(sweeper.Config{Interval: time.Hour, BatchSize: 100}, b.d, b.st, testLog(t))
	run(t, s.Run)
	pgtest.WaitFor(t, 30*time.Second, "the retry to be delivered", func() bool { return count(t, b.st, "delivered") == 1 })
	if got := b.rn.Counts().Requests; got != 2 {
		t.Errorf("runner called %d times, want 2", got)
	}
}

// A database outage stops nothing for good: the sweeper goes on once the
// database is back, and reports each failed pass.
func TestSurvivesDatabaseOutage(t *testing.T) {
	t.Parallel()
	cluster := pgtest.StartT(t)
	st := relaytest.StoreAt(t, cluster.URL("postgres"))
	d := relay.New(relay.Config{
		RunnerURL: relaytest.NewRunner(t).URL(), HTTPTimeout: 5 * time.Second, Concurrency: 4, MaxAttempts: 10,
		Backoff: relay.Backoff{Base: 100 * time.Millisecond, Max: time.Second}, ShutdownGrace: 5 * time.Second,
	}, st, testLog(t), nil)
	run(t, d.Run)
	var failed atomic.Int64
	s := sweeper.New(sweeper.Config{Interval: 200 * time.Millisecond, BatchSize: 100, OnSweep: func(p sweeper.Pass) {
		if p.Err != nil {
			failed.Add(1)
		}
	}}, d, st, testLog(t))
	run(t, s.Run)

	if err := cluster.StopServer("fast"); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, 30*time.Second, "a failed sweep", func() bool { return failed.Load() > 0 })
	if err := cluster.StartServer(); err != nil {
		t.Fatal(err)
	}
	relaytest.Insert(t, st, 5, "sweep")
	pgtest.WaitFor(t, 30*time.Second, "delivery after the outage", func() bool { return count(t, st, "delivered") == 5 })
}

// With an hour between sweeps, rows that arrive after a pass wait for the
// next tick, unless Wake is signalled (the stream does after a failover):
// the woken pass leaves them alone while they are younger than the grace
// (the stream may be sending them unclaimed), and the sweeper comes back
// for them as soon as they pass it.
func TestWakeSweepsAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	wake := make(chan struct{}, 1)
	var passes, claimed atomic.Int64
	const grace = 500 * time.Millisecond
	s := sweeper.New(sweeper.Config{Interval: time.Hour, BatchSize: 100, Wake: wake,
		Grace: grace,
		OnSweep: func(p sweeper.Pass) {
			passes.Add(1)
			claimed.Add(int64(p.Claimed))
		}}, b.d, b.st, testLog(t))
	run(t, s.Run)
	pgtest.WaitFor(t, 30*time.Second, "the first pass", func() bool { return passes.Load() == 1 })
	inserted := time.Now()
	relaytest.Insert(t, b.st, 3, "sweep")
	wake <- struct{}{}
	pgtest.WaitFor(t, 30*time.Second, "the woken pass", func() bool { return passes.Load() >= 2 })
	if n, young := claimed.Load(), time.Since(inserted) < grace; n != 0 && young {
		t.Errorf("the woken pass claimed %d rows younger than the grace", n)
	}
	pgtest.WaitFor(t, 30*time.Second, "delivery once the grace passed", func() bool { return count(t, b.st, "delivered") == 3 })
}
