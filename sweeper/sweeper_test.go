package sweeper_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/store"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/sweeper"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var table = store.Table{Schema: "public", Name: "portal_event_outbox"}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type bundle struct {
	pool  *pgxpool.Pool
	st    *store.Store
	d     *relay.Deliverer
	calls atomic.Int64
}

// setup starts a Deliverer whose runner fails the first `failures` calls.
func setup(t *testing.T, failures int64) *bundle {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := store.Migrate(ctx, pool, store.DefaultSchema(table), ""); err != nil {
		t.Fatal(err)
	}
	b := &bundle{pool: pool, st: store.New(pool, store.DefaultSchema(table))}
	rn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if b.calls.Add(1) <= failures {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(rn.Close)
	b.d = relay.New(relay.Config{
		RunnerURL: rn.URL, HTTPTimeout: 5 * time.Second, Concurrency: 4, MaxAttempts: 10,
		Backoff:       relay.Backoff{Base: 300 * time.Millisecond, Max: time.Second},
		ShutdownGrace: 5 * time.Second,
	}, b.st, quiet, nil)
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

func insertN(t *testing.T, pool *pgxpool.Pool, n int) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), `INSERT INTO portal_event_outbox (event_type, payload)
		SELECT 'sweep', jsonb_build_object('i', i) FROM generate_series(1, $1) i`, n); err != nil {
		t.Fatal(err)
	}
}

func count(t *testing.T, pool *pgxpool.Pool, status string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM portal_event_outbox WHERE status = $1`, status).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// RunOnce claims batch after batch until the due rows are gone.
func TestRunOnceTakesEveryDueRow(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	insertN(t, b.pool, 250)
	s := sweeper.New(sweeper.Config{Interval: time.Hour, BatchSize: 100}, b.d, b.st, quiet)
	n, err := s.RunOnce(context.Background())
	if err != nil || n != 250 {
		t.Fatalf("RunOnce = %d, %v; want 250", n, err)
	}
	pgtest.WaitFor(t, 30*time.Second, "all delivered", func() bool { return count(t, b.pool, "delivered") == 250 })
	if n, err := s.RunOnce(context.Background()); err != nil || n != 0 {
		t.Errorf("second RunOnce = %d, %v; want 0", n, err)
	}
}

// Fresh rows are left to the stream for the grace; retries are not.
func TestGraceLeavesFreshRowsToTheStream(t *testing.T) {
	t.Parallel()
	b := setup(t, 0)
	insertN(t, b.pool, 3)
	s := sweeper.New(sweeper.Config{Interval: time.Hour, BatchSize: 100, Grace: time.Hour}, b.d, b.st, quiet)
	if n, err := s.RunOnce(context.Background()); err != nil || n != 0 {
		t.Fatalf("RunOnce with a grace = %d, %v; want 0", n, err)
	}
	if _, err := b.pool.Exec(context.Background(), `UPDATE portal_event_outbox SET attempts = 1 WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	if n, err := s.RunOnce(context.Background()); err != nil || n != 1 {
		t.Fatalf("RunOnce with a retry due = %d, %v; want 1", n, err)
	}
}

// With an hour between sweeps, a row whose first attempt failed is retried
// when its backoff ends: the sweeper wakes for it, not for the tick.
func TestRetryPickedUpOnTime(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	insertN(t, b.pool, 1)
	s := sweeper.New(sweeper.Config{Interval: time.Hour, BatchSize: 100}, b.d, b.st, quiet)
	run(t, s.Run)
	pgtest.WaitFor(t, 30*time.Second, "the retry to be delivered", func() bool { return count(t, b.pool, "delivered") == 1 })
	if got := b.calls.Load(); got != 2 {
		t.Errorf("runner called %d times, want 2", got)
	}
}

// A database outage stops nothing for good: the sweeper goes on once the
// database is back, and reports each failed pass.
func TestSurvivesDatabaseOutage(t *testing.T) {
	t.Parallel()
	cluster := pgtest.StartT(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, cluster.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := store.Migrate(ctx, pool, store.DefaultSchema(table), ""); err != nil {
		t.Fatal(err)
	}
	rn := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(rn.Close)
	st := store.New(pool, store.DefaultSchema(table))
	d := relay.New(relay.Config{
		RunnerURL: rn.URL, HTTPTimeout: 5 * time.Second, Concurrency: 4, MaxAttempts: 10,
		Backoff: relay.Backoff{Base: 100 * time.Millisecond, Max: time.Second}, ShutdownGrace: 5 * time.Second,
	}, st, quiet, nil)
	run(t, d.Run)
	var failed atomic.Int64
	s := sweeper.New(sweeper.Config{Interval: 200 * time.Millisecond, BatchSize: 100, OnSweep: func(p sweeper.Pass) {
		if p.Err != nil {
			failed.Add(1)
		}
	}}, d, st, quiet)
	run(t, s.Run)

	if err := cluster.StopServer("fast"); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, 30*time.Second, "a failed sweep", func() bool { return failed.Load() > 0 })
	if err := cluster.StartServer(); err != nil {
		t.Fatal(err)
	}
	insertN(t, pool, 5)
	pgtest.WaitFor(t, 30*time.Second, "delivery after the outage", func() bool { return count(t, pool, "delivered") == 5 })
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
		}}, b.d, b.st, quiet)
	run(t, s.Run)
	pgtest.WaitFor(t, 30*time.Second, "the first pass", func() bool { return passes.Load() == 1 })
	inserted := time.Now()
	insertN(t, b.pool, 3)
	wake <- struct{}{}
	pgtest.WaitFor(t, 30*time.Second, "the woken pass", func() bool { return passes.Load() >= 2 })
	if n, young := claimed.Load(), time.Since(inserted) < grace; n != 0 && young {
		t.Errorf("the woken pass claimed %d rows younger than the grace", n)
	}
	pgtest.WaitFor(t, 30*time.Second, "delivery once the grace passed", func() bool { return count(t, b.pool, "delivered") == 3 })
}
