// Package relay is the Deliverer that both the replication stream and the
// sweeper use: claim rows, POST them to the runner, record the outcome.
package relay

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-retryablehttp"
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

// Deliverer claims outbox rows and delivers them with a fixed pool of
// Concurrency workers, which bounds the POSTs in flight for the process.
// The workers POST (http.go), decide each outcome (outcome.go) and hand it
// to the recorder (recorder.go), which writes it.
type Deliverer struct {
	cfg    Config
	store  *store.Store
	log    *slog.Logger
	obs    Observer
	client *retryablehttp.Client
	rec    *recorder
	refuse *refusals
	whole  *statementRefusals
	next   *successors // nil unless rows are ordered per key
	brk    *breaker

	// lease is how long a claim keeps other claimers off a row. It covers a
	// wait in the queue (queueBudget) and the whole attempt after it.
	lease, queueBudget time.Duration

	jobs chan job
	// stop is closed when Run's context ends; see Run for the shutdown.
	stop chan struct{}
	// queueing is held for reading while a claimer puts jobs on the queue,
	// so that Run can tell when no claimer will send on jobs again.
	queueing sync.RWMutex
	// warnedTrace is set once an invalid trace context has been logged.
	warnedTrace atomic.Bool
	// fresh are the rows sent without a claim whose outcome is not
	// written yet (fresh.go).
	fresh freshIDs
}

type job struct {
	row       store.Row
	path      string
	claimedAt time.Time
	probe     uint64     // the breaker's probe id; 0 for a row sent as usual
	fresh     *freshSend // set on a row sent without a claim (fresh.go)
}

// New makes a Deliverer; call Run to start its workers.
func New(cfg Config, st *store.Store, log *slog.Logger, obs Observer) *Deliverer {
	if cfg.UserAgent == "" {
		cfg.UserAgent = "outbox-relay"
	}
	if obs == nil {
		obs = nopObserver{}
	}
	attemptBudget := time.Duration(quickRetries+1)*cfg.HTTPTimeout + 2*time.Second
	refuse, whole := newRefusals(log, obs), newStatementRefusals(log, obs)
	d := &Deliverer{
		cfg:    cfg,
		store:  st,
		log:    log,
		obs:    obs,
		rec:    newRecorder(st, log, refuse, whole, cfg.Concurrency),
		refuse: refuse,
		whole:  whole,
		// A row normally waits in the queue for milliseconds; one that
		// waited longer than an attempt's budget is given back unsent (see
		// work), so the lease is two budgets.
		queueBudget: attemptBudget,
		jobs:        make(chan job, cfg.Concurrency),
		stop:        make(chan struct{}),
	}
	d.lease = d.queueBudget + attemptBudget
	if st.Ordered() {
		d.next = newSuccessors()
		d.rec.written, d.rec.linger = d.next.add, orderedLinger
	}
	d.rec.seal, d.rec.forget = d.seal, d.fresh.remove
	d.brk = newBreaker(log, cfg.Concurrency, cfg.ProbeMax, cfg.Backoff, d.rec.wake)
	d.client = newClient(cfg, d.quickRetry)
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
	if d.next != nil {
		claimers.Go(func() { d.claimSuccessors(ctx) })
	}

	<-ctx.Done()
	close(d.stop)
	grace := time.AfterFunc(d.cfg.ShutdownGrace, cancelSend)
	defer grace.Stop()
	lastWrite := time.AfterFunc(d.cfg.ShutdownGrace+finalWriteTimeout, cancelRecord)
	defer lastWrite.Stop()

	d.queueing.Lock()
	close(d.jobs)
	d.queueing.Unlock()
	workers.Wait()
	d.rec.close()
	<-recorded

	if rows := slices.Concat(unsent...); len(rows) > 0 {
		d.release(ctx, rows)
	}
	return nil
}

func (d *Deliverer) stopping() bool {
	select {
	case <-d.stop:
		return true
	default:
		return false
	}
}

// DeliverIDs claims those of ids that are pending and due and queues them
// for delivery. It returns the ids it did not claim: already taken, already
// done, not due, or not yet visible to this snapshot. While the runner is
// down or has asked for a pause, or the database refuses a statement
// whatever its rows, it claims nothing and returns none: the rows wait in
// the table for the sweeper.
func (d *Deliverer) DeliverIDs(ctx context.Context, ids []string) (missing []string, err error) {
	if d.stopping() {
		return nil, errStopped
	}
	if !d.brk.admit() || d.whole.active() {
		return nil, nil
	}
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, claimTimeout)
	c, err := d.store.ClaimIDs(cctx, ids, d.lease, d.cfg.MaxAttempts)
	cancel()
	if d.whole.refused(StatementClaim, err) {
		return nil, nil
	}
	if err = d.take(ctx, PathStream, start, c, 0, err); err != nil {
		return nil, err
	}
	return unclaimed(ids, c), nil
}

// take hands on what a claim took, also when the claim failed part way: a
// claim halved around refused rows commits each half on its own, so the
// rows of the halves before a failing one are claimed, leased and counted.
// They are sent like any others (or given back, attempt uncounted), never
// left to their lease with an attempt that did not happen. It returns the
// claim's error, or else enqueue's.
func (d *Deliverer) take(ctx context.Context, path string, start time.Time, c store.Claim, probe uint64, err error) error {
	if err != nil && c.Len() == 0 {
		return err
	}
	d.claimed(path, c)
	if qerr := d.enqueue(ctx, path, start, c, probe); err == nil {
		return qerr
	}
	return err
}

// unclaimed is ids less those the claim took, tried or saw.
func unclaimed(ids []string, c store.Claim) (missing []string) {
	// A claim takes at most one row per id given (by key: one per key),
	// so as many as ids means every id was found.
	if c.Len() == len(ids) {
		return nil
	}
	got := make(map[string]bool, c.Len()+len(c.Seen))
	for _, id := range c.Seen {
		got[id] = true
	}
	for _, r := range c.Rows {
		got[r.ID] = true
	}
	for _, r := range c.Dead {
		got[r.ID] = true
	}
	for _, r := range c.Refused {
		got[r.ID] = true
	}
	for _, id := range ids {
		if !got[id] {
			missing = append(missing, id)
		}
	}
	return missing
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
	if d.stopping() {
		return 0, errStopped
	}
	if d.whole.wait(time.Now()) > 0 {
		return 0, nil
	}
	if d.whole.active() {
		limit = 1
	}
	var probe uint64
	if !d.brk.admit() {
		if probe = d.brk.mayProbe(time.Now()); probe == 0 {
			return 0, nil
		}
		limit = 1
	}
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, claimTimeout)
	c, err := d.store.ClaimDue(cctx, limit, grace, d.lease, d.cfg.MaxAttempts, d.fresh.list(d.refuse.skip()))
	cancel()
	if len(c.Rows) == 0 {
		d.brk.probeDone(probe)
	}
	if d.whole.refused(StatementClaim, err) {
		return 0, nil
	}
	return c.Len(), d.take(ctx, PathSweep, start, c, probe, err)
}

// claimed deals with what a claim took besides rows to send: rows dead
// already (every attempt used up) are counted, rows that cannot be sent
// are logged (enqueue records them), refused rows are noted.
func (d *Deliverer) claimed(path string, c store.Claim) {
	d.refuse.note(StatementClaim, c.Refused)
	if d.refuse.n.Load() > 0 {
		for _, r := range c.Rows {
			d.refuse.clear(r.ID)
		}
	}
	buried := 0
	for _, r := range c.Dead {
		d.observe(Attempt{Path: path, Outcome: OutcomeDead})
		if r.Kind == store.KindBuried {
			if d.next != nil {
				d.next.add([]store.Result{r}, func(string) bool { return false })
			}
			buried++
			continue
		}
		d.log.Warn("event dead-lettered", "id", r.ID, "attempts", r.Attempt, "reason", r.Error)
	}
	if buried > 0 {
		d.log.Warn("rows marked dead: the relay stopped during each of their attempts",
			"rows", buried, "max_attempts", d.cfg.MaxAttempts)
	}
}

// WriteErrors lists the rows whose writes the database refuses now.
func (d *Deliverer) WriteErrors() []WriteError { return d.refuse.list() }

// enqueue queues the claimed rows for the workers, blocking while the
// queue is full, and the rows that cannot be sent for the recorder; the
// rows it cannot queue are released, and so are those left when the
// runner goes down meanwhile. probe is the breaker's probe id when the
// claim was a probe.
func (d *Deliverer) enqueue(ctx context.Context, path string, claimedAt time.Time, c store.Claim, probe uint64) error {
	d.queueing.RLock()
	defer d.queueing.RUnlock()
	// Run closes stop before it waits for queueing, and jobs and the
	// recorder only after: while stop is open here, both stay open until
	// RUnlock.
	rows := c.Rows
	if d.stopping() {
		d.brk.probeDone(probe)
		d.release(ctx, rows)
		return errStopped
	}
	for _, r := range c.Dead {
		if r.Kind != store.KindBuried {
			d.rec.add(r)
		}
	}
	for i, r := range rows {
		if probe == 0 && d.brk.down() {
			d.release(ctx, rows[i:])
			return nil
		}
		select {
		case d.jobs <- job{row: r, path: path, claimedAt: claimedAt, probe: probe}:
		case <-d.stop:
			d.brk.probeDone(probe)
			d.release(ctx, rows[i:])
			return errStopped
		case <-ctx.Done():
			d.brk.probeDone(probe)
			d.release(ctx, rows[i:])
			return ctx.Err()
		}
	}
	return nil
}

// release gives back the leases of claimed rows that will not be sent, so
// they are due again at once instead of when the lease ends.
func (d *Deliverer) release(ctx context.Context, rows []store.Row) {
	if len(rows) == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	refused, err := d.store.Release(rctx, rows)
	if !d.whole.refused(StatementRelease, err) && err != nil {
		d.log.Warn("could not give back unsent rows; they are retried when their lease ends", "rows", len(rows), "error", err)
	}
	d.refuse.note(StatementRelease, refused)
}

// work sends jobs until the queue is closed and returns the rows it did
// not send because the Deliverer was stopping, for Run to release. Worker
// i takes a job only while i is within the breaker's concurrency limit.
func (d *Deliverer) work(ctx context.Context, i int) (unsent []store.Row) {
	for {
		d.brk.await(i, d.stop)
		j, ok := <-d.jobs
		if !ok {
			return unsent
		}
		if j.fresh != nil && !d.claimLate(&j) {
			continue
		}
		if d.stopping() {
			d.brk.probeDone(j.probe)
			unsent = d.unsent(unsent, j)
			continue
		}
		if d.giveBack(ctx, j) {
			continue
		}
		res, sent := d.attempt(ctx, j)
		if !sent {
			// Cut by the end of the shutdown grace: not a failure of the
			// runner, so neither a backoff nor a step towards dead.
			d.brk.probeDone(j.probe)
			unsent = d.unsent(unsent, j)
			continue
		}
		if j.fresh != nil {
			res.Kind = res.Kind.Unclaimed()
		}
		d.rec.addSent(res, j.fresh)
	}
}

// claimLate turns a fresh job whose lease is due already (it waited in the
// queue) into a claimed one, and says whether it is still to be sent: not
// when someone else claimed it meanwhile.
func (d *Deliverer) claimLate(j *job) bool {
	if time.Until(j.fresh.leaseAt) > 0 {
		return true
	}
	leased, lost := d.seal(j.fresh)
	if !leased && !lost {
		// The lease write failed: the database is away, or slow. Left
		// untouched, the row is the sweeper's when it can claim it.
		d.fresh.remove(j.fresh.id)
	}
	j.fresh = nil
	return leased
}

// unsent adds a job that will not be sent to the list Run releases: a
// fresh row holds no lease to give back unless its timer claimed it.
func (d *Deliverer) unsent(list []store.Row, j job) []store.Row {
	if j.fresh != nil && !d.drop(j.fresh) {
		return list
	}
	return append(list, j.row)
}

// giveBack releases a job that must not be sent now, attempt uncounted,
// and says whether it did.
func (d *Deliverer) giveBack(ctx context.Context, j job) bool {
	switch {
	case d.whole.wait(time.Now()) > 0:
		// The database refuses a statement whatever its rows: the row's
		// outcome could not be written, so it waits in the table.
		d.brk.probeDone(j.probe)
	case j.fresh == nil && time.Since(j.claimedAt) > d.queueBudget:
		// A row that waited in the queue past its budget may have been
		// claimed again elsewhere once its lease ends: sending it now could
		// double it. Still within the lease (two budgets), so nobody else
		// holds it: release it, attempt uncounted, rather than let the
		// lease run out with an attempt counted that never happened.
		d.log.Warn("gave back a claim that waited too long to be sent",
			"id", j.row.ID, "waited", time.Since(j.claimedAt).Round(time.Millisecond))
		d.brk.probeDone(j.probe)
	case j.probe == 0 && d.brk.down():
		// The runner went down after the row was claimed (or taken from
		// the stream): it waits in the table for the runner's return. (A
		// Retry-After pause stops claims only: what was claimed goes, at
		// the lowered concurrency.)
	default:
		return false
	}
	d.putBack(ctx, j)
	return true
}

// putBack gives back a job that will not be sent: a claimed row's lease,
// attempt uncounted. A fresh row holds nothing unless its timer claimed
// it: left untouched, it is due in the table, for the sweeper once the
// grace passes.
func (d *Deliverer) putBack(ctx context.Context, j job) {
	if j.fresh != nil && !d.drop(j.fresh) {
		return
	}
	d.release(ctx, []store.Row{j.row})
}

// attempt POSTs one row and decides its outcome; sent is false when the
// POST was cut short by the end of the shutdown grace.
func (d *Deliverer) attempt(ctx context.Context, j job) (res store.Result, sent bool) {
	r := &j.row
	if r.Traceparent != "" {
		d.checkTraceContext(r)
	}
	var span trace.Span
	if d.cfg.Tracer != nil {
		ctx, span = d.startSpan(ctx, &j)
	}
	start := time.Now()
	ans := d.post(ctx, r)
	took := time.Since(start)
	if ans.err != nil && ctx.Err() != nil {
		if span != nil {
			endSpan(span, start, ans, outcomeUnsent, "")
		}
		return store.Result{}, false
	}
	who := d.brk.observe(ans, start, j.probe)
	res, outcome := decide(r, ans, who, d.cfg.MaxAttempts, d.cfg.Backoff, time.Now())
	res.Key = r.Key
	if span != nil {
		endSpan(span, start, ans, outcome, res.Error)
	}
	d.observe(Attempt{Path: j.path, Outcome: outcome, Duration: took, Age: time.Since(r.CreatedAt)})
	if res.Status == store.StatusDead {
		d.log.Warn("event dead-lettered", "id", r.ID, "event_id", r.EventID, "type", r.Type, "attempts", r.Attempt, "reason", res.Error)
	} else if d.log.Enabled(ctx, slog.LevelDebug) {
		d.log.Debug("attempt", "id", r.ID, "path", j.path, "outcome", outcome, "took", took)
	}
	return res, true
}

func (d *Deliverer) observe(a Attempt) { d.obs.ObserveAttempt(a) }

type nopObserver struct{}

func (nopObserver) ObserveAttempt(Attempt)   {}
func (nopObserver) ObserveWriteError(string) {}

func (nopObserver) ObserveTraceContextInvalid(string) {}
