package relay

import (
	"context"
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

// freshSend is the state of one fresh row from its queueing to its
// outcome: the timer that claims it when the send runs long.
type freshSend struct {
	id       string
	inserted int       // attempts as inserted: what the conditional writes expect
	leaseAt  time.Time // when the timer claims the row
	timer    *time.Timer
	done     chan struct{} // closed once the timer's lease write returned
	leased   bool          // the lease write claimed the row; set before done
	lost     bool          // someone else had claimed it; set before done
}

// DeliverInserts queues rows the stream saw inserted: those it decoded
// whole and that are due are sent without a claim while that is safe (see
// above); the others are claimed by id, as DeliverIDs does. It returns the
// ids of that claim that it did not find.
func (d *Deliverer) DeliverInserts(ctx context.Context, ins []store.Insert) (missing []string, err error) {
	if d.stopping() {
		return nil, errStopped
	}
	if !d.brk.admit() {
		return nil, nil
	}
	now := time.Now()
	var claim []string
	var fresh []job
	for i := range ins {
		in := &ins[i]
		leaseAt, ok := handover.Fresh(d.cfg.FreshGrace, in.Row.Attempt-1, in.Due, now)
		if !in.Sendable || !ok || d.next != nil {
			claim = append(claim, in.Row.ID)
			continue
		}
		fs := &freshSend{id: in.Row.ID, inserted: in.Row.Attempt - 1, leaseAt: leaseAt, done: make(chan struct{})}
		fresh = append(fresh, job{row: in.Row, path: PathStream, claimedAt: now, fresh: fs})
	}
	if len(fresh) > 0 {
		if err := d.enqueueFresh(ctx, fresh); err != nil {
			return nil, err
		}
	}
	if len(claim) == 0 {
		return nil, nil
	}
	return d.DeliverIDs(ctx, claim)
}

// enqueueFresh arms each job's lease timer and queues it, blocking while
// the queue is full. Jobs it cannot queue are dropped: untouched in the
// table, they are the sweeper's once the grace has passed; one whose timer
// claimed it while it waited is released, attempt uncounted.
func (d *Deliverer) enqueueFresh(ctx context.Context, jobs []job) error {
	d.queueing.RLock()
	defer d.queueing.RUnlock()
	if d.stopping() {
		return errStopped
	}
	for _, j := range jobs {
		fs := j.fresh
		d.fresh.add(fs.id)
		fs.timer = time.AfterFunc(time.Until(fs.leaseAt), func() { d.leaseFresh(fs) })
		select {
		case d.jobs <- j:
			continue
		case <-d.stop:
		case <-ctx.Done():
		}
		if d.drop(fs) {
			d.release(ctx, []store.Row{j.row})
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errStopped
	}
	return nil
}

// leaseFresh claims a fresh row whose send outlived half the grace.
func (d *Deliverer) leaseFresh(fs *freshSend) {
	defer close(fs.done)
	ctx, cancel := context.WithTimeout(context.Background(), claimTimeout)
	defer cancel()
	ok, err := d.store.Lease(ctx, fs.id, fs.inserted, d.lease)
	switch {
	case err != nil:
		d.log.Warn("could not claim a row whose send runs long; another replica may send it again after the grace",
			"id", fs.id, "error", err)
	case ok:
		fs.leased = true
	default:
		fs.lost = true
		d.log.Warn("a row this relay is sending was claimed elsewhere (or changed) before its send was written; it may be delivered twice",
			"id", fs.id)
	}
}

// seal ends a fresh send's timer, waiting for its lease write if the timer
// fired, and says whether that write claimed the row: then the row is an
// ordinary claimed row from here on (its outcome counted as claimed, its
// giving back a release), or someone else's. In both cases, this process's
// sweeps need not skip it any more. seal is called once per fresh send.
func (d *Deliverer) seal(fs *freshSend) (leased, lost bool) {
	if fs.timer.Stop() {
		return false, false
	}
	<-fs.done
	if fs.leased || fs.lost {
		d.fresh.remove(fs.id)
	}
	return fs.leased, fs.lost
}

// drop seals a fresh send that will not be sent and reports whether its
// lease write claimed the row meanwhile: then the lease must be given
// back. Otherwise the row is left untouched in the table.
func (d *Deliverer) drop(fs *freshSend) (leased bool) {
	leased, _ = d.seal(fs)
	d.fresh.remove(fs.id)
	return leased
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
