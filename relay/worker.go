package relay

import (
	"context"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// job is one row on its way from a claimer (or the fresh path) through a
// worker: sent by the sender, its outcome ended by the completer.
type job struct {
	row       store.Row
	path      string
	claimedAt time.Time
	probe     uint64 // the breaker's probe id; 0 for a row sent as usual
	hold      hold
}

// hold is what a job holds on its row until its outcome is written: the
// lease of a claim (claimed), or, for a row sent fresh, a timer that
// claims it if the send runs long (*freshSend, fresh.go).
type hold interface {
	// ready says, as a worker takes the job, whether its row is still to
	// be sent, and with what hold from here on.
	ready() (hold, bool)
	// stale says whether the job waited in the queue, since queued, too
	// long to be sent safely.
	stale(queued time.Time, budget time.Duration) bool
	// drop ends the hold of a row that will not be sent and says whether
	// a lease is to be given back.
	drop() bool
	// kind is the Kind of the row's outcome, given that decided for a
	// claimed row.
	kind(store.Kind) store.Kind
	// settle ends the hold before the outcome is written, adjusting its
	// Kind, and says whether the outcome is still to be written.
	settle(res *store.Result) bool
}

// claimed is the hold of a claimed row: its lease.
type claimed struct{}

func (claimed) ready() (hold, bool) { return claimed{}, true }

// stale: a row that waited in the queue past its budget may have been
// claimed again elsewhere once its lease ends: sending it now could
// double it. Still within the lease (two budgets), so nobody else holds
// it: it is released, attempt uncounted, rather than left to the lease
// with an attempt counted that never happened.
func (claimed) stale(queued time.Time, budget time.Duration) bool {
	return time.Since(queued) > budget
}

func (claimed) drop() bool                   { return true }
func (claimed) kind(k store.Kind) store.Kind { return k }
func (claimed) settle(*store.Result) bool    { return true }

// work sends jobs until the queue is closed and returns the rows it did
// not send because the Deliverer was stopping, for Run to release. Worker
// i takes a job only while i is within the breaker's concurrency limit.
func (d *Deliverer) work(ctx context.Context, i int) (unsent []store.Row) {
	for {
		d.brk.await(i, d.claim.stop)
		j, ok := <-d.claim.jobs
		if !ok {
			return unsent
		}
		if j.hold, ok = j.hold.ready(); !ok {
			continue
		}
		if d.claim.stopping() {
			d.brk.probeDone(j.probe)
			unsent = j.unsent(unsent)
			continue
		}
		if d.giveBack(ctx, j) {
			continue
		}
		x, cut := d.send.send(ctx, &j)
		if cut {
			// Cut by the end of the shutdown grace: not a failure of the
			// runner, so neither a backoff nor a step towards dead.
			d.brk.probeDone(j.probe)
			unsent = j.unsent(unsent)
			continue
		}
		d.done.complete(ctx, &j, x)
	}
}

// unsent adds a job that will not be sent to the list Run releases,
// unless it holds no lease to give back.
func (j *job) unsent(list []store.Row) []store.Row {
	if !j.hold.drop() {
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
	case j.hold.stale(j.claimedAt, d.queueBudget):
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
	if j.hold.drop() {
		d.claim.release(ctx, []store.Row{j.row})
	}
	return true
}
