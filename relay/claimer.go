package relay

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// claimer is the stage that takes rows from the table: by id (the
// stream), due (the sweeper), the next row of a key (successors.go), and
// the probes the breaker admits. It queues what it claimed to the
// workers on jobs, and gives back what it cannot queue.
type claimer struct {
	store  *store.Store
	log    *slog.Logger
	obs    Observer
	brk    admission
	refuse *refusals
	whole  *statementRefusals
	dead   deadRecorder
	next   *successors // nil unless rows are ordered per key
	fresh  skipper     // rows this process sends fresh: the sweep skips them

	lease       time.Duration
	maxAttempts int

	jobs chan job
	// stop is closed when Run's context ends; see Deliverer.Run.
	stop chan struct{}
	// queueing is held for reading while a claimer puts jobs on the queue,
	// so that Run can tell when no claimer will send on jobs again.
	queueing sync.RWMutex
}

// admission is the breaker as the claimer asks it: whether rows may be
// claimed, whether the runner is down, whether a probe may go and when
// it is over.
type admission interface {
	admit() bool
	down() bool
	mayProbe(now time.Time) uint64
	probeDone(id uint64)
}

// skipper appends the ids a sweep must not claim.
type skipper interface {
	list(skip []string) []string
}

// deadRecorder takes the outcome of a row a claim found unsendable.
type deadRecorder interface {
	add(store.Result)
}

func (c *claimer) stopping() bool {
	select {
	case <-c.stop:
		return true
	default:
		return false
	}
}

// halt refuses claims from now on; a claimer waiting for room in the
// queue gives its rows back.
func (c *claimer) halt() { close(c.stop) }

// closeQueue closes jobs once no claimer is putting jobs on it; halt
// comes first, so that none waits.
func (c *claimer) closeQueue() {
	c.queueing.Lock()
	close(c.jobs)
	c.queueing.Unlock()
}

// byIDs is DeliverIDs.
func (c *claimer) byIDs(ctx context.Context, ids []string) (missing []string, err error) {
	if c.stopping() {
		return nil, errStopped
	}
	if !c.brk.admit() || c.whole.active() {
		return nil, nil
	}
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, claimTimeout)
	cl, err := c.store.ClaimIDs(cctx, ids, c.lease, c.maxAttempts)
	cancel()
	if c.whole.refused(StatementClaim, err) {
		return nil, nil
	}
	if err = c.take(ctx, PathStream, start, cl, 0, err); err != nil {
		return nil, err
	}
	return unclaimed(ids, cl), nil
}

// due is DeliverDue.
func (c *claimer) due(ctx context.Context, limit int, grace time.Duration) (int, error) {
	if c.stopping() {
		return 0, errStopped
	}
	if c.whole.wait(time.Now()) > 0 {
		return 0, nil
	}
	if c.whole.active() {
		limit = 1
	}
	var probe uint64
	if !c.brk.admit() {
		if probe = c.brk.mayProbe(time.Now()); probe == 0 {
			return 0, nil
		}
		limit = 1
	}
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, claimTimeout)
	cl, err := c.store.ClaimDue(cctx, limit, grace, c.lease, c.maxAttempts, c.fresh.list(c.refuse.skip()))
	cancel()
	if len(cl.Rows) == 0 {
		c.brk.probeDone(probe)
	}
	if c.whole.refused(StatementClaim, err) {
		return 0, nil
	}
	return cl.Len(), c.take(ctx, PathSweep, start, cl, probe, err)
}

// keys is DeliverKeys.
func (c *claimer) keys(ctx context.Context, keys []string) error {
	if c.stopping() {
		return errStopped
	}
	if !c.brk.admit() || c.whole.active() {
		return nil // the runner is down or a statement refused: the probes and the sweep take over
	}
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, claimTimeout)
	cl, err := c.store.ClaimKeys(cctx, keys, c.lease, c.maxAttempts, c.refuse.skip())
	cancel()
	if err != nil {
		return err
	}
	c.claimed(PathNext, cl)
	return c.enqueue(ctx, PathNext, start, cl, 0)
}

// take hands on what a claim took, also when the claim failed part way: a
// claim halved around refused rows commits each half on its own, so the
// rows of the halves before a failing one are claimed, leased and counted.
// They are sent like any others (or given back, attempt uncounted), never
// left to their lease with an attempt that did not happen. It returns the
// claim's error, or else enqueue's.
func (c *claimer) take(ctx context.Context, path string, start time.Time, cl store.Claim, probe uint64, err error) error {
	if err != nil && cl.Len() == 0 {
		return err
	}
	c.claimed(path, cl)
	if qerr := c.enqueue(ctx, path, start, cl, probe); err == nil {
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

// claimed deals with what a claim took besides rows to send: rows dead
// already (every attempt used up) are counted, rows that cannot be sent
// are logged (enqueue records them), refused rows are noted.
func (c *claimer) claimed(path string, cl store.Claim) {
	c.refuse.note(StatementClaim, cl.Refused)
	if c.refuse.n.Load() > 0 {
		for _, r := range cl.Rows {
			c.refuse.clear(r.ID)
		}
	}
	buried := 0
	for _, r := range cl.Dead {
		c.obs.ObserveAttempt(Attempt{Path: path, Outcome: OutcomeDead})
		if r.Kind == store.KindBuried {
			if c.next != nil {
				c.next.add([]store.Result{r}, func(string) bool { return false })
			}
			buried++
			continue
		}
		c.log.Warn("event dead-lettered", "id", r.ID, "attempts", r.Attempt, "reason", r.Error)
	}
	if buried > 0 {
		c.log.Warn("rows marked dead: the relay stopped during each of their attempts",
			"rows", buried, "max_attempts", c.maxAttempts)
	}
}

// enqueue queues the claimed rows for the workers, blocking while the
// queue is full, and the rows that cannot be sent for the recorder; the
// rows it cannot queue are released, and so are those left when the
// runner goes down meanwhile. probe is the breaker's probe id when the
// claim was a probe.
func (c *claimer) enqueue(ctx context.Context, path string, claimedAt time.Time, cl store.Claim, probe uint64) error {
	c.queueing.RLock()
	defer c.queueing.RUnlock()
	// Run closes stop before it waits for queueing, and jobs and the
	// recorder only after: while stop is open here, both stay open until
	// RUnlock.
	rows := cl.Rows
	if c.stopping() {
		c.brk.probeDone(probe)
		c.release(ctx, rows)
		return errStopped
	}
	for _, r := range cl.Dead {
		if r.Kind != store.KindBuried {
			c.dead.add(r)
		}
	}
	for i, r := range rows {
		if probe == 0 && c.brk.down() {
			c.release(ctx, rows[i:])
			return nil
		}
		if err := c.put(ctx, job{row: r, path: path, claimedAt: claimedAt, probe: probe, hold: claimed{}}); err != nil {
			c.brk.probeDone(probe)
			c.release(ctx, rows[i:])
			return err
		}
	}
	return nil
}

// put queues j, blocking while the queue is full; it fails with
// errStopped once the Deliverer stops, or with ctx's error. The caller
// holds queueing for reading.
func (c *claimer) put(ctx context.Context, j job) error {
	select {
	case c.jobs <- j:
		return nil
	case <-c.stop:
		return errStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}

// release gives back the leases of claimed rows that will not be sent, so
// they are due again at once instead of when the lease ends.
func (c *claimer) release(ctx context.Context, rows []store.Row) {
	if len(rows) == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	refused, err := c.store.Release(rctx, rows)
	if !c.whole.refused(StatementRelease, err) && err != nil {
		c.log.Warn("could not give back unsent rows; they are retried when their lease ends", "rows", len(rows), "error", err)
	}
	c.refuse.note(StatementRelease, refused)
}
