package relay

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/handover"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// A row the stream has just seen committed is sent straight from its WAL
// tuple when internal/handover says it is fresh: no claim statement before
// the POST, and one conditional outcome write after it
// (store.KindFresh). handover's package comment argues why no other
// sender takes the row meanwhile; this file keeps its side of that rule:
// the lease at the row's lease time, the conditional writes, and the sweeps
// of this process skipping its fresh rows until their outcome is written.

// freshPath is the stage that sends rows fresh: it takes the stream's
// inserts, queues those it may send without a claim on the claimer's
// queue, and leaves the others to the claimer's claim by id. A fresh row
// travels as a job whose hold is its freshSend.
type freshPath struct {
	claim   *claimer
	store   *store.Store
	log     *slog.Logger
	grace   time.Duration // the sweepers' grace (Config.FreshGrace)
	lease   time.Duration
	ordered bool // rows ordered per key are always claimed
	// ids are the rows sent fresh whose outcome is not written yet.
	ids freshIDs
}

// freshSend is the state of one fresh row from its queueing to its
// outcome: the timer that claims it when the send runs long.
type freshSend struct {
	path     *freshPath
	id       string
	inserted int       // attempts as inserted: what the conditional writes expect
	leaseAt  time.Time // when the timer claims the row
	timer    *time.Timer
	done     chan struct{} // closed once the timer's lease write returned
	leased   bool          // the lease write claimed the row; set before done
	lost     bool          // someone else had claimed it; set before done
}

// deliver is DeliverInserts: rows decoded whole and due are sent without
// a claim while that is safe (see above); the others are claimed by id.
// It returns the ids of that claim that it did not find.
func (p *freshPath) deliver(ctx context.Context, ins []store.Insert) (missing []string, err error) {
	if p.claim.stopping() {
		return nil, errStopped
	}
	if !p.claim.brk.admit() {
		return nil, nil
	}
	now := time.Now()
	var claim []string
	var fresh []job
	for i := range ins {
		in := &ins[i]
		leaseAt, ok := handover.Fresh(p.grace, in.Row.Attempt-1, in.Due, now)
		if !in.Sendable || !ok || p.ordered {
			claim = append(claim, in.Row.ID)
			continue
		}
		fs := &freshSend{path: p, id: in.Row.ID, inserted: in.Row.Attempt - 1, leaseAt: leaseAt, done: make(chan struct{})}
		fresh = append(fresh, job{row: in.Row, path: PathStream, claimedAt: now, hold: fs})
	}
	if len(fresh) > 0 {
		if err := p.enqueue(ctx, fresh); err != nil {
			return nil, err
		}
	}
	if len(claim) == 0 {
		return nil, nil
	}
	return p.claim.byIDs(ctx, claim)
}

// enqueue arms each job's lease timer and queues it, blocking while the
// queue is full. Jobs it cannot queue are dropped: untouched in the
// table, they are the sweeper's once the grace has passed; one whose
// timer claimed it while it waited is released, attempt uncounted.
func (p *freshPath) enqueue(ctx context.Context, jobs []job) error {
	p.claim.queueing.RLock()
	defer p.claim.queueing.RUnlock()
	if p.claim.stopping() {
		return errStopped
	}
	for _, j := range jobs {
		fs := j.hold.(*freshSend)
		p.ids.add(fs.id)
		fs.timer = time.AfterFunc(time.Until(fs.leaseAt), func() { p.leaseFresh(fs) })
		err := p.claim.put(ctx, j)
		if err == nil {
			continue
		}
		if fs.drop() {
			p.claim.release(ctx, []store.Row{j.row})
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errStopped
	}
	return nil
}

// leaseFresh claims a fresh row whose send outlived half the grace.
func (p *freshPath) leaseFresh(fs *freshSend) {
	defer close(fs.done)
	ctx, cancel := context.WithTimeout(context.Background(), claimTimeout)
	defer cancel()
	ok, err := p.store.Lease(ctx, fs.id, fs.inserted, p.lease)
	switch {
	case err != nil:
		p.log.Warn("could not claim a row whose send runs long; another replica may send it again after the grace",
			"id", fs.id, "error", err)
	case ok:
		fs.leased = true
	default:
		fs.lost = true
		p.log.Warn("a row this relay is sending was claimed elsewhere (or changed) before its send was written; it may be delivered twice",
			"id", fs.id)
	}
}

// seal ends a fresh send's timer, waiting for its lease write if the timer
// fired, and says whether that write claimed the row: then the row is an
// ordinary claimed row from here on (its outcome counted as claimed, its
// giving back a release), or someone else's. In both cases, this process's
// sweeps need not skip it any more. seal is called once per fresh send.
func (fs *freshSend) seal() (leased, lost bool) {
	if fs.timer.Stop() {
		return false, false
	}
	<-fs.done
	if fs.leased || fs.lost {
		fs.path.ids.remove(fs.id)
	}
	return fs.leased, fs.lost
}

// ready turns a fresh job whose lease is due already (it waited in the
// queue) into a claimed one, and says whether it is still to be sent: not
// when someone else claimed it meanwhile.
func (fs *freshSend) ready() (hold, bool) {
	if time.Until(fs.leaseAt) > 0 {
		return fs, true
	}
	leased, lost := fs.seal()
	if !leased && !lost {
		// The lease write failed: the database is away, or slow. Left
		// untouched, the row is the sweeper's when it can claim it.
		fs.path.ids.remove(fs.id)
	}
	return claimed{}, leased
}

// stale is false: a fresh row holds no lease that could run out while it
// waits in the queue; its timer claims it at its lease time instead.
func (fs *freshSend) stale(time.Time, time.Duration) bool { return false }

// drop seals a fresh send that will not be sent and reports whether its
// lease write claimed the row meanwhile: then the lease must be given
// back. Otherwise the row is left untouched in the table, for the sweeper
// once the grace passes.
func (fs *freshSend) drop() (leased bool) {
	leased, _ = fs.seal()
	fs.path.ids.remove(fs.id)
	return leased
}

// kind marks the outcome as that of a row sent without a claim.
func (fs *freshSend) kind(k store.Kind) store.Kind { return k.Unclaimed() }

// settle seals the send before its outcome is written and says whether to
// write it: as a claimed row's when the lease write claimed the row, not
// at all when someone else claimed it (theirs is the outcome that counts).
func (fs *freshSend) settle(res *store.Result) bool {
	leased, lost := fs.seal()
	if leased {
		res.Kind = res.Kind.Claimed()
	}
	return !lost
}

// freshIDs are the rows of fresh sends whose outcome is not written yet:
// no sweep of this process may claim them, whatever their age (the
// database may be away for longer than the grace while an outcome waits).
type freshIDs struct {
	mu  sync.Mutex
	ids map[string]int
	n   atomic.Int64
}

func (f *freshIDs) add(id string) {
	f.mu.Lock()
	if f.ids == nil {
		f.ids = map[string]int{}
	}
	f.ids[id]++
	f.n.Store(int64(len(f.ids)))
	f.mu.Unlock()
}

func (f *freshIDs) remove(id string) {
	f.mu.Lock()
	if f.ids[id]--; f.ids[id] <= 0 {
		delete(f.ids, id)
	}
	f.n.Store(int64(len(f.ids)))
	f.mu.Unlock()
}

// list appends the ids to skip.
func (f *freshIDs) list(skip []string) []string {
	if f.n.Load() == 0 {
		return skip
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for id := range f.ids {
		skip = append(skip, id)
	}
	return skip
}
