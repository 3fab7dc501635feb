// Package relay is the Deliverer that both the replication stream and the
// sweeper use: claim rows, POST them to the runner, record the outcome.
package relay

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// Paths a row can be claimed by, as reported to the Observer.
const (
	PathStream = "stream"
	PathSweep  = "sweep"
)

// Config is what the Deliverer needs to know.
type Config struct {
	RunnerURL   string
	SigningKey  []byte // nil: no Standard Webhooks headers
	Token       string // empty: no Authorization header
	UserAgent   string // empty: "outbox-relay"
	HTTPTimeout time.Duration
	Concurrency int
	MaxAttempts int
	Backoff     Backoff
	// ShutdownGrace is how long in-flight POSTs may run on after the
	// context given to Run is cancelled.
	ShutdownGrace time.Duration
	// Tracer makes a span of every attempt; nil makes none, at no cost.
	Tracer trace.Tracer
	// FreshGrace is how long the sweepers of every replica leave a fresh
	// row to the stream (their grace); within it the stream's rows are
	// sent without a claim (fresh.go). 0 claims every row first.
	FreshGrace time.Duration
	// ProbeMax caps the wait between probes of a runner that is down
	// (see breaker); 0 is DefaultProbeMax.
	ProbeMax time.Duration
}

// Attempt is one finished POST, for metrics.
type Attempt struct {
	Path     string
	Outcome  string
	Duration time.Duration // of the HTTP exchange
	Age      time.Duration // created_at to now, meaningful when delivered
}

// Observer is told of every attempt, of every write the database refused
// and of every trace context header dropped as invalid; it must not block.
type Observer interface {
	ObserveAttempt(Attempt)
	ObserveWriteError(statement string)
	ObserveTraceContextInvalid(header string)
}

const (
	// quickRetries is how many times one attempt retries a connection-level
	// failure in process before the row goes back to the table with a
	// backoff.
	quickRetries = 2
	// claimTimeout bounds one claim statement.
	claimTimeout = 10 * time.Second
	// releaseTimeout bounds giving back claims that will not be sent; it
	// runs after Run's context has ended.
	releaseTimeout = 5 * time.Second
	// recordBatch bounds one outcome UPDATE.
	recordBatch = 256
	// writeTimeout bounds one outcome UPDATE; writeRetryMin and
	// writeRetryMax are the backoff between failed ones.
	writeTimeout  = 10 * time.Second
	writeRetryMin = 100 * time.Millisecond
	writeRetryMax = 5 * time.Second
	// finalWriteTimeout is how long outcomes may still be written after the
	// shutdown grace, while the database is slow or away.
	finalWriteTimeout = 10 * time.Second
)

// errStopped is returned to claimers once the Deliverer is shutting down.
var errStopped = errors.New("deliverer stopped")

// Deliverer is the façade over the delivery stages, which it wires and
// runs: the claimer (claimer.go) and the fresh path (fresh.go) queue
// jobs; a fixed pool of Concurrency workers (worker.go), which bounds the
// POSTs in flight for the process, hands each to the sender (sender.go)
// and its exchange to the completer (completer.go), whose recorder
// (recorder.go) writes the outcomes.
type Deliverer struct {
	cfg    Config
	log    *slog.Logger
	brk    *breaker
	refuse *refusals
	whole  *statementRefusals
	claim  *claimer
	fresh  *freshPath
	send   *sender
	done   *completer
	rec    *recorder

	// lease is how long a claim keeps other claimers off a row. It covers a
	// wait in the queue (queueBudget) and the whole attempt after it.
	lease, queueBudget time.Duration
}

// New makes a Deliverer; call Run to start its workers.
func New(cfg Config, st *store.Store, log *slog.Logger, obs Observer) *Deliverer {
	if cfg.UserAgent == "" {
		cfg.UserAgent = "outbox-relay"
	}
	if obs == nil {
		obs = nopObserver{}
	}
	// A row normally waits in the queue for milliseconds; one that waited
	// longer than an attempt's budget is given back unsent (see giveBack),
	// so the lease is two budgets.
	attemptBudget := time.Duration(quickRetries+1)*cfg.HTTPTimeout + 2*time.Second
	d := &Deliverer{cfg: cfg, log: log, queueBudget: attemptBudget, lease: 2 * attemptBudget,
		refuse: newRefusals(log, obs), whole: newStatementRefusals(log, obs)}
	d.fresh = &freshPath{store: st, log: log, grace: cfg.FreshGrace, lease: d.lease, ordered: st.Ordered()}
	d.rec = newRecorder(st, log, d.refuse, d.whole, &d.fresh.ids, cfg.Concurrency)
	d.brk = newBreaker(log, cfg.Concurrency, cfg.ProbeMax, cfg.Backoff, d.rec.wake)
	d.claim = &claimer{store: st, log: log, obs: obs, brk: d.brk, refuse: d.refuse, whole: d.whole,
		dead: d.rec, fresh: &d.fresh.ids, lease: d.lease, maxAttempts: cfg.MaxAttempts,
		jobs: make(chan job, cfg.Concurrency), stop: make(chan struct{})}
	d.fresh.claim = d.claim
	if st.Ordered() {
		d.claim.next = newSuccessors()
		d.rec.written, d.rec.linger = d.claim.next, orderedLinger
	}
	d.send = newSender(cfg, log, obs, d.brk)
	d.done = &completer{log: log, obs: obs, brk: d.brk, rec: d.rec, maxAttempts: cfg.MaxAttempts, backoff: cfg.Backoff}
	return d
}

// Runner is the state of the runner as the breaker sees it.
func (d *Deliverer) Runner() RunnerState { return d.brk.snapshot() }

// Paused is how long claiming waits from now because the runner is down
// (until the next probe), asked for a pause (Retry-After), or the database
// refuses a statement whatever its rows (statements.go); 0 when rows may
// be claimed. DeliverDue claims nothing meanwhile but the probes.
func (d *Deliverer) Paused() time.Duration {
	now := time.Now()
	return max(d.brk.paused(now), d.whole.wait(now))
}

// Lease is how long a claim holds a row.
func (d *Deliverer) Lease() time.Duration { return d.lease }

// Rescheduled is signalled after outcomes that scheduled retries were
// written, so the sweeper can bring its next wake-up forward.
func (d *Deliverer) Rescheduled() <-chan struct{} { return d.rec.rescheduled }

// WriteErrors lists the rows whose writes the database refuses now.
func (d *Deliverer) WriteErrors() []WriteError { return d.refuse.list() }

// Run starts the workers and the recorder and returns when ctx is done and
// in-flight work has finished.
//
// The end of ctx is the only way to stop, and shutdown runs in order:
//  1. stop is closed: claimers are refused, and one waiting for room in
//     the queue gives its rows back.
//  2. Once no claimer holds queueing, jobs is closed: nothing else will
//     be queued.
//  3. Workers finish the POSTs under way, which may run ShutdownGrace past
//     ctx so that a SIGTERM does not cut a delivery the runner may already
//     have acted on. Jobs still queued, and POSTs cut at the end of the
//     grace, are kept as unsent.
//  4. The recorder writes every outcome on a context that outlives the
//     grace by finalWriteTimeout: a 2xx that came in just before the cut
//     must be recorded, or the row is sent again after its lease.
//  5. The unsent rows are released, due again at once, attempt uncounted.
func (d *Deliverer) Run(ctx context.Context) error {
	sendCtx, cancelSend := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSend()
	recordCtx, cancelRecord := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelRecord()

	unsent := make([][]store.Row, d.cfg.Concurrency) // one list per worker
	var workers sync.WaitGroup
	for i := range unsent {
		workers.Go(func() { unsent[i] = d.work(sendCtx, i) })
	}
	recorded := make(chan struct{})
	go func() {
		defer close(recorded)
		d.rec.run(recordCtx)
	}()
	var claimers sync.WaitGroup
	defer claimers.Wait()
	if d.claim.next != nil {
		claimers.Go(func() { d.claim.claimSuccessors(ctx) })
	}

	<-ctx.Done()
	d.claim.halt()
	grace := time.AfterFunc(d.cfg.ShutdownGrace, cancelSend)
	defer grace.Stop()
	lastWrite := time.AfterFunc(d.cfg.ShutdownGrace+finalWriteTimeout, cancelRecord)
	defer lastWrite.Stop()

	d.claim.closeQueue()
	workers.Wait()
	d.rec.close()
	<-recorded

	if rows := slices.Concat(unsent...); len(rows) > 0 {
		d.claim.release(ctx, rows)
	}
	return nil
}

// DeliverIDs claims those of ids that are pending and due and queues them
// for delivery. It returns the ids it did not claim: already taken, already
// done, not due, or not yet visible to this snapshot. While the runner is
// down or has asked for a pause, or the database refuses a statement
// whatever its rows, it claims nothing and returns none: the rows wait in
// the table for the sweeper.
func (d *Deliverer) DeliverIDs(ctx context.Context, ids []string) (missing []string, err error) {
	return d.claim.byIDs(ctx, ids)
}

// DeliverDue claims up to limit due rows and queues them. Rows never tried
// are taken only when older than grace (see store.ClaimDue), and rows the
// database refused a moment ago not at all. It returns the number of rows
// the claim took or tried.
//
// While the runner is down it claims only a probe, when one is due: the
// oldest row a sweep may take, under the same grace, since another
// replica's stream may be sending a younger one (internal/handover).
// During a Retry-After pause it claims nothing, and while the database
// refuses a statement whatever its rows it claims one row when the
// refusal's backoff ends. Paused says how long each lasts.
func (d *Deliverer) DeliverDue(ctx context.Context, limit int, grace time.Duration) (int, error) {
	return d.claim.due(ctx, limit, grace)
}

// DeliverKeys claims the head of each key, when it is due, and queues it.
func (d *Deliverer) DeliverKeys(ctx context.Context, keys []string) error {
	return d.claim.keys(ctx, keys)
}

// DeliverInserts queues rows the stream saw inserted: those it decoded
// whole and that are due are sent without a claim while that is safe
// (fresh.go); the others are claimed by id, as DeliverIDs does. It
// returns the ids of that claim that it did not find.
func (d *Deliverer) DeliverInserts(ctx context.Context, ins []store.Insert) (missing []string, err error) {
	return d.fresh.deliver(ctx, ins)
}

type nopObserver struct{}

func (nopObserver) ObserveAttempt(Attempt)   {}
func (nopObserver) ObserveWriteError(string) {}

func (nopObserver) ObserveTraceContextInvalid(string) {}
