// Package relay is the Deliverer that both the replication stream and the
// sweeper use: claim rows, POST them to the runner, record the outcome.
package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-retryablehttp"
	"github.com/sethvargo/go-retry"

	"github.com/outbox-relay/outbox-relay/internal/retryafter"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// Paths a row can be claimed by, as reported to the Observer.
const (
	PathStream = "stream"
	PathSweep  = "sweep"
)

// Outcomes of an attempt, as reported to the Observer.
const (
	OutcomeDelivered = "delivered"
	OutcomeRetry     = "retry"
	OutcomeDead      = "dead"
)

// Config is what the Deliverer needs to know.
type Config struct {
	RunnerURL   string
	SigningKey  []byte // nil: no Standard Webhooks headers
	Token       string // empty: no Authorization header
	HTTPTimeout time.Duration
	Concurrency int
	MaxAttempts int
	Backoff     Backoff
	// ShutdownGrace is how long in-flight POSTs may run on after the
	// context given to Run is cancelled.
	ShutdownGrace time.Duration
}

// Attempt is one finished POST, for metrics.
type Attempt struct {
	Path     string
	Outcome  string
	Duration time.Duration // of the HTTP exchange
	Age      time.Duration // created_at to now, meaningful when delivered
}

// Observer is told of every attempt; it must not block.
type Observer interface {
	ObserveAttempt(Attempt)
}

// quickRetries is how many times one attempt retries a connection-level
// failure in process before the row goes back to the table with a backoff.
const quickRetries = 2

// maxErrorLen bounds last_error.
const maxErrorLen = 1024

// Deliverer claims outbox rows and delivers them with a fixed pool of
// Concurrency workers, which bounds the POSTs in flight for the process.
type Deliverer struct {
	cfg    Config
	store  *store.Store
	log    *slog.Logger
	obs    Observer
	client *retryablehttp.Client

	// lease is how long a claim keeps other claimers off a row. It covers a
	// wait in the queue (queueBudget) and the whole attempt after it.
	lease, queueBudget time.Duration

	jobs     chan job
	results  chan store.Result
	stopping chan struct{} // closed when Run's context ends
	mu       sync.RWMutex  // held for reading while a claimer queues jobs
	closed   bool

	recorded chan struct{} // signalled after a write that scheduled a retry

	releaseMu sync.Mutex
	released  []store.Row
}

type job struct {
	row       store.Row
	path      string
	claimedAt time.Time
}

// New makes a Deliverer; call Run to start its workers.
func New(cfg Config, st *store.Store, log *slog.Logger, obs Observer) *Deliverer {
	attemptBudget := time.Duration(quickRetries+1)*cfg.HTTPTimeout + 2*time.Second
	d := &Deliverer{
		cfg:    cfg,
		store:  st,
		log:    log,
		obs:    obs,
		client: newClient(cfg),
		// A row normally waits in the queue for milliseconds; one that
		// waited longer than an attempt's budget is dropped unsent (see
		// work), so the lease is two budgets.
		queueBudget: attemptBudget,
		jobs:        make(chan job, cfg.Concurrency),
		results:     make(chan store.Result, cfg.Concurrency),
		stopping:    make(chan struct{}),
		recorded:    make(chan struct{}, 1),
	}
	d.lease = d.queueBudget + attemptBudget
	return d
}

// Lease is how long a claim holds a row.
func (d *Deliverer) Lease() time.Duration { return d.lease }

func newClient(cfg Config) *retryablehttp.Client {
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          cfg.Concurrency * 2,
		MaxIdleConnsPerHost:   cfg.Concurrency * 2, // keep-alive for every worker
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     true,
	}
	c := retryablehttp.NewClient()
	c.HTTPClient = &http.Client{
		Transport: tr,
		Timeout:   cfg.HTTPTimeout,
		// A redirect is an answer, not an instruction: the URL is
		// configured, and following it could send events elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	c.Logger = nil
	c.RetryMax = quickRetries
	c.RetryWaitMin = 50 * time.Millisecond
	c.RetryWaitMax = 500 * time.Millisecond
	c.CheckRetry = retryConnectionErrors
	c.ErrorHandler = retryablehttp.PassthroughErrorHandler
	return c
}

// retryConnectionErrors retries in process only when there is no answer at
// all and no timeout: an answer, even a 503, goes back to the table with a
// backoff, and a timeout has already spent the attempt's time.
func retryConnectionErrors(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil || err == nil {
		return false, nil
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false, nil
	}
	return true, nil
}

// Run starts the workers and the recorder and returns when ctx is done and
// in-flight work has finished: POSTs under way get ShutdownGrace, rows
// claimed but not yet sent are given back, outcomes are written.
func (d *Deliverer) Run(ctx context.Context) error {
	// POSTs outlive ctx by the grace, so a SIGTERM does not cut a delivery
	// the runner may already have acted on.
	sendCtx, cancelSend := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSend()

	var workers sync.WaitGroup
	for range d.cfg.Concurrency {
		workers.Go(func() { d.work(sendCtx) })
	}
	// Outcomes are written on a context of their own that outlives the
	// grace: a 2xx that came in just before the cut must still be recorded,
	// or the row is sent again after its lease.
	recordCtx, cancelRecord := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelRecord()
	recorded := make(chan struct{})
	go func() {
		defer close(recorded)
		d.record(recordCtx)
	}()

	<-ctx.Done()
	close(d.stopping)
	grace := time.AfterFunc(d.cfg.ShutdownGrace, cancelSend)
	defer grace.Stop()
	lastWrite := time.AfterFunc(d.cfg.ShutdownGrace+finalWriteTimeout, cancelRecord)
	defer lastWrite.Stop()

	d.mu.Lock() // waits for claimers that are queueing
	d.closed = true
	close(d.jobs)
	d.mu.Unlock()
	workers.Wait()
	close(d.results)
	<-recorded

	if len(d.released) > 0 { // the workers are done: no lock needed
		d.release(ctx, d.released)
	}
	return nil
}

// DeliverIDs claims those of ids that are pending and due and queues them
// for delivery. It returns the ids it did not claim: already taken, already
// done, not due, or not yet visible to this snapshot.
func (d *Deliverer) DeliverIDs(ctx context.Context, ids []int64) (missing []int64, err error) {
	if d.isStopping() {
		return nil, errStopped
	}
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, claimTimeout)
	rows, buried, err := d.store.ClaimIDs(cctx, ids, d.lease, d.cfg.MaxAttempts)
	cancel()
	if err != nil {
		return nil, err
	}
	d.bury(PathStream, buried)
	if len(rows)+len(buried) < len(ids) {
		got := make(map[int64]bool, len(rows)+len(buried))
		for _, r := range rows {
			got[r.ID] = true
		}
		for _, r := range buried {
			got[r.ID] = true
		}
		for _, id := range ids {
			if !got[id] {
				missing = append(missing, id)
			}
		}
	}
	return missing, d.enqueue(ctx, PathStream, start, rows)
}

// DeliverDue claims up to limit due rows and queues them. Rows never tried
// are taken only when older than grace (see store.ClaimDue). It returns
// the number of rows claimed.
func (d *Deliverer) DeliverDue(ctx context.Context, limit int, grace time.Duration) (int, error) {
	if d.isStopping() {
		return 0, errStopped
	}
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, claimTimeout)
	rows, buried, err := d.store.ClaimDue(cctx, limit, grace, d.lease, d.cfg.MaxAttempts)
	cancel()
	if err != nil {
		return 0, err
	}
	d.bury(PathSweep, buried)
	return len(rows) + len(buried), d.enqueue(ctx, PathSweep, start, rows)
}

func (d *Deliverer) bury(path string, buried []store.Result) {
	for range buried {
		d.observe(Attempt{Path: path, Outcome: OutcomeDead})
	}
	if len(buried) > 0 {
		d.log.Warn("rows marked dead: the relay stopped during each of their attempts",
			"rows", len(buried), "max_attempts", d.cfg.MaxAttempts)
	}
}

// finalWriteTimeout is how long outcomes may still be written after the
// shutdown grace, while the database is slow or away.
const finalWriteTimeout = 10 * time.Second

// claimTimeout bounds one claim statement.
const claimTimeout = 10 * time.Second

// errStopped is returned to claimers once the Deliverer is shutting down.
var errStopped = errors.New("deliverer stopped")

func (d *Deliverer) enqueue(ctx context.Context, path string, claimedAt time.Time, rows []store.Row) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	for i, r := range rows {
		if d.closed {
			d.release(ctx, rows[i:])
			return errStopped
		}
		select {
		case d.jobs <- job{row: r, path: path, claimedAt: claimedAt}:
		case <-d.stopping:
			d.release(ctx, rows[i:])
			return errStopped
		case <-ctx.Done():
			d.release(ctx, rows[i:])
			return ctx.Err()
		}
	}
	return nil
}

// release gives back the leases of claimed rows that will not be sent, so
// they are due again at once instead of when the lease ends.
func (d *Deliverer) release(ctx context.Context, rows []store.Row) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := d.store.Release(rctx, rows); err != nil {
		d.log.Warn("could not give back unsent rows; they are retried when their lease ends", "rows", len(rows), "error", err)
	}
}

func (d *Deliverer) isStopping() bool {
	select {
	case <-d.stopping:
		return true
	default:
		return false
	}
}

func (d *Deliverer) giveBack(rows []store.Row) {
	d.releaseMu.Lock()
	d.released = append(d.released, rows...)
	d.releaseMu.Unlock()
}

func (d *Deliverer) work(ctx context.Context) {
	for j := range d.jobs {
		select {
		case <-d.stopping:
			d.giveBack([]store.Row{j.row})
			continue
		default:
		}
		// A row that waited in the queue past its budget may have been
		// claimed again elsewhere once its lease ends: sending it now could
		// double it. Leave it; the lease brings it back.
		if time.Since(j.claimedAt) > d.queueBudget {
			// Still within the lease (two budgets), so nobody else holds
			// it: give it back, attempt uncounted, rather than let the
			// lease run out with an attempt counted that never happened.
			d.log.Warn("gave back a claim that waited too long to be sent",
				"id", j.row.ID, "waited", time.Since(j.claimedAt).Round(time.Millisecond))
			d.release(ctx, []store.Row{j.row})
			continue
		}
		res, sent := d.attempt(ctx, j)
		if !sent {
			// Cut by the end of the shutdown grace: not a failure of the
			// runner, so neither a backoff nor a step towards dead.
			d.giveBack([]store.Row{j.row})
			continue
		}
		d.results <- res
	}
}

// attempt POSTs one row and decides its outcome; sent is false when the
// POST was cut short by the end of the shutdown grace.
func (d *Deliverer) attempt(ctx context.Context, j job) (res store.Result, sent bool) {
	r := &j.row
	start := time.Now()
	code, retryAfter, err := d.post(ctx, r)
	took := time.Since(start)
	if err != nil && ctx.Err() != nil {
		return store.Result{}, false
	}

	res = store.Result{ID: r.ID, Attempt: r.Attempt}
	switch {
	case err == nil && code >= 200 && code < 300:
		res.Status = store.StatusDelivered
	case err == nil && !retryable(code):
		res.Status = store.StatusDead
		res.Error = fmt.Sprintf("runner answered %d (permanent)", code)
	default:
		msg := ""
		if err != nil {
			msg = err.Error()
		} else {
			msg = fmt.Sprintf("runner answered %d%s", code, retryAfterNote(retryAfter))
		}
		if r.Attempt >= d.cfg.MaxAttempts {
			res.Status = store.StatusDead
			res.Error = fmt.Sprintf("gave up after %d attempts: %s", r.Attempt, msg)
			break
		}
		res.Status = store.StatusPending
		res.Next = time.Now().Add(max(d.cfg.Backoff.Delay(r.Attempt), retryAfter))
		res.Error = msg
	}
	res.Error = truncate(res.Error, maxErrorLen)

	outcome := map[string]string{
		store.StatusDelivered: OutcomeDelivered,
		store.StatusPending:   OutcomeRetry,
		store.StatusDead:      OutcomeDead,
	}[res.Status]
	d.observe(Attempt{Path: j.path, Outcome: outcome, Duration: took, Age: time.Since(r.CreatedAt)})
	if res.Status == store.StatusDead {
		d.log.Warn("event dead-lettered", "id", r.ID, "event_id", r.EventID, "type", r.Type, "attempts", r.Attempt, "reason", res.Error)
	} else {
		d.log.Debug("attempt", "id", r.ID, "path", j.path, "outcome", outcome, "took", took)
	}
	return res, true
}

func retryAfterNote(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return fmt.Sprintf(", Retry-After %s", d)
}

// retryable reports whether an HTTP status may succeed later.
func retryable(code int) bool {
	switch code {
	case http.StatusRequestTimeout, http.StatusTooEarly, http.StatusTooManyRequests:
		return true
	}
	return code >= 500
}

// maxDrain is how much of an answer is read so the connection can be
// reused; a longer answer is cut and its connection closed.
const maxDrain = 64 << 10

func (d *Deliverer) post(ctx context.Context, r *store.Row) (code int, retryAfter time.Duration, err error) {
	// A fresh buffer per request: the transport may still be reading the
	// body when Do returns (an early answer), so it cannot be reused.
	body := appendBody(make([]byte, 0, 160+len(r.Type)+len(r.Payload)), r)
	req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodPost, d.cfg.RunnerURL, body)
	if err != nil {
		return 0, 0, fmt.Errorf("build request: %w", err)
	}
	h := req.Header
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", "outbox-relay/"+Version)
	h.Set("Idempotency-Key", r.EventID)
	if d.cfg.SigningKey != nil {
		ts := time.Now().Unix()
		h.Set("webhook-id", r.EventID)
		h.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
		h.Set("webhook-signature", sign(d.cfg.SigningKey, r.EventID, ts, body))
	}
	if d.cfg.Token != "" {
		h.Set("Authorization", "Bearer "+d.cfg.Token)
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, 0, describe(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	ra, _ := retryafter.Parse(resp.Header.Get("Retry-After"), time.Now())
	return resp.StatusCode, ra, nil
}

// describe turns a client error into a short reason. url.Error quotes the
// URL, which may hold credentials: the runner is named by host only.
func describe(err error) error {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return errors.New("runner timed out")
	case errors.Is(err, context.Canceled):
		return errors.New("cancelled at shutdown")
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return fmt.Errorf("runner unreachable: %w", err)
}

// truncate cuts s to at most n bytes of valid UTF-8 without NUL, which a
// Postgres text column refuses.
func truncate(s string, n int) string {
	s = strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "\uFFFD")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func (d *Deliverer) observe(a Attempt) {
	if d.obs != nil {
		d.obs.ObserveAttempt(a)
	}
}

// recordBatch bounds one outcome UPDATE.
const recordBatch = 256

// record writes outcomes as they come, batching whatever has queued up
// while the previous write ran: one UPDATE … FROM unnest per batch.
func (d *Deliverer) record(ctx context.Context) {
	batch := make([]store.Result, 0, recordBatch)
	for r := range d.results {
		batch = append(batch[:0], r)
	fill:
		for len(batch) < recordBatch {
			select {
			case r, ok := <-d.results:
				if !ok {
					break fill
				}
				batch = append(batch, r)
			default:
				break fill
			}
		}
		d.write(ctx, batch)
		for _, r := range batch {
			if r.Status == store.StatusPending {
				select {
				case d.recorded <- struct{}{}:
				default:
				}
				break
			}
		}
	}
}

// Rescheduled is signalled after outcomes that scheduled retries were
// written, so the sweeper can bring its next wake-up forward.
func (d *Deliverer) Rescheduled() <-chan struct{} { return d.recorded }

// NextDue is how long until the earliest pending row becomes due for the
// sweeper (fresh rows count after grace); ok is false when none is pending.
func (d *Deliverer) NextDue(ctx context.Context, grace time.Duration) (time.Duration, bool, error) {
	return d.store.NextDue(ctx, grace)
}

// write retries a failed write while the database is away; if it never
// comes back before shutdown the rows' leases end and they are sent again,
// with the same event_id.
func (d *Deliverer) write(ctx context.Context, batch []store.Result) {
	b := retry.WithCappedDuration(5*time.Second, retry.NewExponential(100*time.Millisecond))
	failed := false
	err := retry.Do(ctx, b, func(ctx context.Context) error {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := d.store.Record(wctx, batch); err != nil {
			if !failed {
				d.log.Error("cannot record delivery outcomes; retrying", "rows", len(batch), "error", err)
				failed = true
			}
			return retry.RetryableError(err)
		}
		return nil
	})
	switch {
	case err != nil:
		d.log.Error("gave up recording delivery outcomes; the rows are retried when their lease ends", "rows", len(batch), "error", err)
	case failed:
		d.log.Info("recording delivery outcomes again")
	}
}
