package relay_test

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/internal/store"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/sweeper"
)

// outage is a Deliverer and a sweeper (the real one, so that its pauses
// and wake-ups are tested too) against a relaytest.Runner that can go
// away and come back. The runner answers code, slowly (answerSlowly),
// until a test sets another answer.
type outage struct {
	pool *pgxpool.Pool
	rn   *relaytest.Runner
	d    *relay.Deliverer
	logs *relaytest.Buffer
	code atomic.Int32
}

func startOutage(t *testing.T, maxAttempts int) *outage {
	t.Helper()
	pool := newPool(t)
	rn, err := relaytest.StartRunner()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rn.Stop)
	logs := &relaytest.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	st := store.New(pool, store.DefaultSchema(table))
	d := relay.New(relay.Config{
		RunnerURL: rn.URL(), HTTPTimeout: 5 * time.Second, Concurrency: 8, MaxAttempts: maxAttempts,
		Backoff:       relay.Backoff{Base: 20 * time.Millisecond, Max: 100 * time.Millisecond},
		ShutdownGrace: 5 * time.Second, ProbeMax: 300 * time.Millisecond,
	}, st, log, nil)
	startDeliverer(t, d)
	runSweeper(t, sweeper.New(sweeper.Config{Interval: 200 * time.Millisecond, BatchSize: 100}, d, st, log))
	o := &outage{pool: pool, rn: rn, d: d, logs: logs}
	o.code.Store(http.StatusNoContent)
	rn.SetAnswer(answerSlowly(&o.code))
	return o
}

// runSweeper runs s until the test ends.
func runSweeper(t *testing.T, s *sweeper.Sweeper) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func (o *outage) insert(t *testing.T, typ string, n int) {
	t.Helper()
	if _, err := o.pool.Exec(context.Background(), `INSERT INTO portal_event_outbox (event_type, payload)
		SELECT $1, jsonb_build_object('i', i) FROM generate_series(1, $2) i`, typ, n); err != nil {
		t.Fatal(err)
	}
}

// figures are the table's totals: attempts counted (in all and the most
// of one row), rows by status. A row claimed this moment (a probe, say)
// has an attempt counted that its outcome may give back; attempts and
// mostAttempts leave those rows out.
type figures struct{ attempts, mostAttempts, pending, delivered, dead int }

func (o *outage) figures(t *testing.T) figures {
	t.Helper()
	var f figures
	err := o.pool.QueryRow(context.Background(), `SELECT
		coalesce(sum(attempts) FILTER (WHERE status <> 'pending' OR next_attempt_at < now() + interval '10 seconds'), 0),
		coalesce(max(attempts) FILTER (WHERE status <> 'pending' OR next_attempt_at < now() + interval '10 seconds'), 0),
		count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'delivered'),
		count(*) FILTER (WHERE status = 'dead') FROM portal_event_outbox`).Scan(&f.attempts, &f.mostAttempts, &f.pending, &f.delivered, &f.dead)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (o *outage) waitState(t *testing.T, state string) {
	t.Helper()
	pgtest.WaitFor(t, 30*time.Second, "the breaker to be "+state, func() bool { return o.d.Runner().State == state })
}

// answerSlowly answers code after a moment, so that requests overlap and
// the runner's Peak shows the concurrency.
func answerSlowly(code *atomic.Int32) relaytest.Answer {
	return func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
		select {
		case <-time.After(20 * time.Millisecond):
		case <-r.Context().Done():
		}
		c := int(code.Load())
		w.WriteHeader(c)
		return c < 300
	}
}

// With the runner refusing connections the breaker opens; the attempts
// made meanwhile do not count (with MaxAttempts 3, nothing dies however
// long the outage); when the runner is back the first 2xx closes the
// breaker and everything is delivered at full concurrency.
func TestBreakerOpensOnRefusedConnections(t *testing.T) {
	t.Parallel()
	o := startOutage(t, 3)
	if err := o.rn.Refuse(context.Background()); err != nil {
		t.Fatal(err)
	}
	o.insert(t, "t", 60)
	o.waitState(t, relay.RunnerOpen)
	pgtest.WaitFor(t, 30*time.Second, "a few probes", func() bool { return o.d.Runner().Probes >= 4 })
	f := o.figures(t)
	// The first failure of the streak may be the row's own and counts; no
	// other does.
	if f.dead != 0 || f.attempts > 1 {
		t.Errorf("during the outage: %+v, want no dead row and at most 1 attempt counted", f)
	}
	var notCounted int
	_ = o.pool.QueryRow(context.Background(), `SELECT count(*) FROM portal_event_outbox WHERE last_error LIKE '%not counted: the runner is down%'`).Scan(&notCounted)
	if notCounted == 0 {
		t.Error("no row says its attempt was not counted")
	}
	if !strings.Contains(o.logs.String(), "runner down") {
		t.Errorf("the opening is not logged:\n%s", o.logs.String())
	}

	if err := o.rn.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	o.rn.ResetPeak()
	pgtest.WaitFor(t, 30*time.Second, "every row to be delivered", func() bool { return o.figures(t).delivered == 60 })
	if s := o.d.Runner(); s.State != relay.RunnerClosed || s.ConcurrencyLimit != 8 {
		t.Errorf("after the return: %+v, want closed at concurrency 8", s)
	}
	if p := o.rn.Peak(); p < 2 {
		t.Errorf("at most %d request at once after the return: the drain did not resume at full concurrency", p)
	}
	if n := strings.Count(o.logs.String(), "runner back"); n != 1 {
		t.Errorf("the closing is logged %d times, want once", n)
	}
}

// A runner answering 503 to everything opens the breaker; while it is
// open, probes go one at a time and the outage costs each row at most one
// counted attempt; the first 2xx closes it and the backlog
// drains at full concurrency.
func TestBreakerProbesOneAtATime(t *testing.T) {
	t.Parallel()
	o := startOutage(t, 3)
	o.code.Store(http.StatusServiceUnavailable)
	o.insert(t, "t", 100)
	o.waitState(t, relay.RunnerOpen)
	// Requests sent before the breaker opened finish in 20 ms, the first
	// probe goes 300 ms after it opened: once it was sent and nothing is
	// in flight, only probes reach the runner. Counting from the opening
	// itself failed on a loaded machine: a request sent just before it
	// reached the runner after the runner had been seen idle.
	pgtest.WaitFor(t, 30*time.Second, "the first probe", func() bool { return o.d.Runner().Probes >= 1 && o.rn.InFlight() == 0 })
	before, first := o.rn.Counts().Requests, o.d.Runner().Probes
	o.rn.ResetPeak()
	pgtest.WaitFor(t, 30*time.Second, "a few probes", func() bool { return o.d.Runner().Probes >= first+4 })
	if p := o.rn.Peak(); p > 1 {
		t.Errorf("%d requests at once while the breaker was open, want one probe at a time", p)
	}
	probes, requests := o.d.Runner().Probes-first, o.rn.Counts().Requests-before
	if requests > probes+1 {
		t.Errorf("%d requests reached the runner during %d probes", requests, probes)
	}
	// The 503s to the requests sent before the opening count, one per
	// row; no probe's does.
	if f := o.figures(t); f.dead != 0 || f.mostAttempts > 1 {
		t.Errorf("during the outage: %+v, want no dead row and at most 1 attempt counted per row", f)
	}

	o.code.Store(http.StatusNoContent)
	pgtest.WaitFor(t, 30*time.Second, "the breaker to close", func() bool { return o.d.Runner().State == relay.RunnerClosed })
	o.rn.ResetPeak()
	pgtest.WaitFor(t, 30*time.Second, "every row to be delivered", func() bool { return o.figures(t).delivered == 100 })
	if p := o.rn.Peak(); p < 2 {
		t.Errorf("at most %d request at once after the return: the drain did not resume at full concurrency", p)
	}
}

// A row the runner fails alone (a 500 for it, 2xx for the others) is the
// row's own failure: it counts, and the row is dead after MaxAttempts,
// while the breaker stays closed.
func TestRowFailingAloneStillDies(t *testing.T) {
	t.Parallel()
	o := startOutage(t, 3)
	o.rn.SetAnswer(func(w http.ResponseWriter, _ *http.Request, body []byte) bool {
		if strings.Contains(string(body), `"type":"poison"`) {
			w.WriteHeader(http.StatusInternalServerError)
			return false
		}
		w.WriteHeader(http.StatusNoContent)
		return true
	})
	o.insert(t, "poison", 1)
	o.insert(t, "t", 200)
	pgtest.WaitFor(t, 30*time.Second, "the poison row to die and the others to be delivered", func() bool {
		f := o.figures(t)
		return f.dead == 1 && f.delivered == 200
	})
	var attempts int
	var lastErr string
	if err := o.pool.QueryRow(context.Background(), `SELECT attempts, last_error FROM portal_event_outbox WHERE status = 'dead'`).Scan(&attempts, &lastErr); err != nil {
		t.Fatal(err)
	}
	if attempts != 3 || !strings.Contains(lastErr, "gave up after 3 attempts: runner answered 500") {
		t.Errorf("dead row: attempts %d, last_error %q", attempts, lastErr)
	}
	if strings.Contains(o.logs.String(), "runner down") {
		t.Error("one row's failures opened the breaker")
	}
}

// A 429 with Retry-After halves the in-flight concurrency and pauses
// claiming: the runner sees fewer requests at once after it, and none
// counts towards dead.
func TestThrottleLowersConcurrency(t *testing.T) {
	t.Parallel()
	o := startOutage(t, 3)
	const first, throttled = 80, 8
	var n atomic.Int64
	var throttledAt atomic.Int64 // UnixNano of the first 429
	// after is the most requests at once among the first ten that came
	// once the pause began (the requests in flight at the 429 are done
	// by then); the limit grows back after those.
	var after, afterN, inFlight atomic.Int64
	o.rn.SetAnswer(func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
		i := n.Add(1)
		now := inFlight.Add(1)
		defer inFlight.Add(-1)
		if at := throttledAt.Load(); at != 0 && time.Now().UnixNano() > at+int64(500*time.Millisecond) && afterN.Add(1) <= 10 && now > after.Load() {
			after.Store(now)
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-r.Context().Done():
		}
		if i > first && i <= first+throttled {
			throttledAt.CompareAndSwap(0, time.Now().UnixNano())
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return false
		}
		w.WriteHeader(http.StatusNoContent)
		return true
	})
	o.insert(t, "t", 300)
	pgtest.WaitFor(t, 30*time.Second, "the first requests", func() bool { return n.Load() >= first })
	before := o.rn.Peak()
	if before < 4 {
		t.Fatalf("only %d requests at once before the 429s; the test needs the relay at full concurrency", before)
	}
	pgtest.WaitFor(t, 30*time.Second, "the limit to drop", func() bool { return o.d.Runner().ConcurrencyLimit < 8 })
	pgtest.WaitFor(t, 60*time.Second, "every row to be delivered", func() bool { return o.figures(t).delivered == 300 })
	if a := after.Load(); a == 0 || a >= before {
		t.Errorf("%d requests at once after the 429s, %d before: want fewer", a, before)
	}
	if f := o.figures(t); f.dead != 0 || f.attempts != 300 {
		t.Errorf("after the run: %+v, want 300 attempts counted (the 429s not), none dead", f)
	}
}
