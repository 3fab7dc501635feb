package relay

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/sethvargo/go-retry"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// recorder writes the outcomes the workers decide, batching whatever has
// queued up while the previous write ran, and tells the sweeper when a
// write scheduled a retry. An outcome the database refuses to write (a
// trigger, a constraint) is held and tried again alone with backoff, while
// every other outcome is written at once.
type recorder struct {
	store   *store.Store
	log     *slog.Logger
	refuse  *refusals
	whole   *statementRefusals
	results chan sent
	// fresh is told of each fresh row whose outcome write is over.
	fresh forgetter
	// rescheduled is signalled after a write that scheduled a retry; it
	// holds one signal, so a burst of retries wakes the sweeper once.
	rescheduled chan struct{}
	// written, when set, is told of every batch written, and of which of
	// its rows the database refused: ordered delivery claims the next row
	// of each key that is done (successors.go).
	written writtenNoter
	// linger is how long a small batch waits for more outcomes: short when
	// rows are ordered, since a key's next row is claimed only once its
	// previous row's outcome is written.
	linger time.Duration

	held []heldResult // used by run's goroutine only; see held.go
	// maxHeld caps held; heldN is len(held) for other goroutines; full
	// is set while outcomes past the cap are dropped, dropped counts them.
	maxHeld int
	heldN   atomic.Int32
	full    bool
	dropped int
	// unseen are fresh outcomes whose row the write did not find yet,
	// by next try; used by run's goroutine only.
	unseen []heldResult
}

// forgetter forgets a row sent fresh once its outcome write is over.
type forgetter interface {
	remove(id string)
}

// writtenNoter is told of the outcomes written, and which were refused.
type writtenNoter interface {
	add(batch []store.Result, refused func(id string) bool)
}

// sent is an outcome to write, with the hold on its row it ends.
type sent struct {
	res  store.Result
	hold hold
	at   time.Time // when it was added
}

// heldResult is an outcome the database refused, waiting for its next try.
type heldResult struct {
	res   store.Result
	next  time.Time
	tries int
}

func newRecorder(st *store.Store, log *slog.Logger, refuse *refusals, whole *statementRefusals, fresh forgetter, buffer int) *recorder {
	return &recorder{
		store:       st,
		log:         log,
		refuse:      refuse,
		whole:       whole,
		fresh:       fresh,
		maxHeld:     maxHeld,
		results:     make(chan sent, buffer),
		rescheduled: make(chan struct{}, 1),
		linger:      recordLinger,
	}
}

// add queues the outcome of a claimed row; it blocks while the recorder
// is behind, which holds the workers back rather than let outcomes pile
// up unwritten.
func (rec *recorder) add(r store.Result) { rec.addSent(r, claimed{}) }

// addSent queues the outcome of a POST, whose row h holds.
func (rec *recorder) addSent(r store.Result, h hold) {
	rec.results <- sent{res: r, hold: h, at: time.Now()}
}

// close says that no outcome will be added; run returns once it has
// written those already added.
func (rec *recorder) close() { close(rec.results) }

// run writes outcomes as they come, one UPDATE … FROM unnest per batch of
// up to recordBatch, until close; refused outcomes are tried again when
// due. Writes are retried until ctx ends.
func (rec *recorder) run(ctx context.Context) {
	batch := make([]sent, 0, recordBatch)
	results := make([]store.Result, 0, recordBatch)
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	defer linger.Stop()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		var due <-chan time.Time
		if next, ok := rec.nextTry(); ok {
			timer.Reset(time.Until(next))
			due = timer.C
		}
		select {
		case r, ok := <-rec.results:
			if !ok {
				rec.lastTry(ctx)
				return
			}
			batch = rec.gather(rec.fill(append(batch[:0], r)), linger)
			results = rec.sealAll(batch, results[:0])
			if len(results) > 0 {
				rec.writeFresh(ctx, results, nil)
			}
			clear(batch)
		case <-due:
			now := time.Now()
			rec.retryUnseen(ctx, now)
			rec.retryHeld(ctx, now)
		}
	}
}

// fill adds to batch whatever outcomes have queued up, up to recordBatch.
func (rec *recorder) fill(batch []sent) []sent {
	for len(batch) < recordBatch {
		select {
		case r, ok := <-rec.results:
			if !ok {
				return batch
			}
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

// Outcomes are coalesced: a batch smaller than lingerBelow is written
// once its first outcome is recordLinger old, with whatever arrived
// meanwhile, so that at moderate rates one statement records many events.
// The wait counts from each outcome's arrival and runs while the previous
// write does, so it never slows the recorder below the rate outcomes
// arrive at; it delays only the outcome write, far inside the half grace a
// fresh row's outcome has (fresh.go), and never the POST. It trades a
// wider crash window (a relay killed within the wait re-sends what it has
// not recorded) for far fewer statements; with rows ordered per key the
// wait is orderedLinger, since each of a key's rows waits for its
// predecessor's outcome. The figures:
// docs/decisions/0002-outcomes-linger-50ms.md.
const (
	lingerBelow   = 16
	recordLinger  = 50 * time.Millisecond
	orderedLinger = 2 * time.Millisecond
)

// gather adds to a small batch what arrives until its first outcome is
// rec.linger old.
func (rec *recorder) gather(batch []sent, t *time.Timer) []sent {
	wait := time.Until(batch[0].at.Add(rec.linger))
	if len(batch) >= lingerBelow || wait <= 0 {
		return batch
	}
	t.Reset(wait)
	defer t.Stop()
	for len(batch) < lingerBelow {
		select {
		case r, ok := <-rec.results:
			if !ok {
				return batch // run sees the close next
			}
			batch = append(batch, r)
		case <-t.C:
			return rec.fill(batch)
		}
	}
	return rec.fill(batch)
}

// sealAll ends the holds of batch and appends the outcomes to write to
// results: a fresh row its lease write claimed is written as a claimed
// row, one someone else claimed not at all (see hold.settle).
func (rec *recorder) sealAll(batch []sent, results []store.Result) []store.Result {
	for _, s := range batch {
		if s.hold.settle(&s.res) {
			results = append(results, s.res)
		}
	}
	return results
}

// unseenRetries are the waits before writing again a fresh outcome whose
// row the write did not find: a commit can reach the stream a moment
// before it is visible. A row still not found was claimed by someone else
// (or changed, or deleted): their outcome counts, and this one is dropped.
var unseenRetries = []time.Duration{time.Millisecond, 4 * time.Millisecond, 16 * time.Millisecond}

// nextTry is when the first held or unseen outcome is due.
func (rec *recorder) nextTry() (time.Time, bool) {
	switch {
	case len(rec.held) > 0 && len(rec.unseen) > 0:
		return minTime(rec.held[0].next, rec.unseen[0].next), true
	case len(rec.held) > 0:
		return rec.held[0].next, true
	case len(rec.unseen) > 0:
		return rec.unseen[0].next, true
	}
	return time.Time{}, false
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// notSeen queues fresh outcomes the write did not find for another try,
// drops those tried enough, and returns the ids queued.
func (rec *recorder) notSeen(unseen []store.Result, tries map[string]int) (again map[string]bool) {
	if len(unseen) == 0 {
		return nil
	}
	now := time.Now()
	again = make(map[string]bool, len(unseen))
	for _, r := range unseen {
		n := tries[r.ID]
		if n >= len(unseenRetries) {
			rec.log.Debug("a fresh row's outcome found the row claimed elsewhere or changed; that outcome counts", "id", r.ID)
			continue
		}
		again[r.ID] = true
		rec.unseen = append(rec.unseen, heldResult{res: r, next: now.Add(unseenRetries[n]), tries: n + 1})
	}
	slices.SortFunc(rec.unseen, func(a, b heldResult) int { return a.next.Compare(b.next) })
	return again
}

// retryUnseen writes again the unseen outcomes that are due, in one batch.
func (rec *recorder) retryUnseen(ctx context.Context, now time.Time) {
	if batch, tries := takeDue(&rec.unseen, now); len(batch) > 0 {
		rec.writeFresh(ctx, batch, tries)
	}
}

// retryHeld writes the held outcomes that are due, in one batch.
func (rec *recorder) retryHeld(ctx context.Context, now time.Time) {
	if batch, tries := takeDue(&rec.held, now); len(batch) > 0 {
		rec.writeTried(ctx, batch, tries)
		rec.counted()
	}
}

// takeDue removes from list (sorted by next) the outcomes due at now, and
// returns them with the tries each has had.
func takeDue(list *[]heldResult, now time.Time) ([]store.Result, map[string]int) {
	n := 0
	for n < len(*list) && !(*list)[n].next.After(now) {
		n++
	}
	if n == 0 {
		return nil, nil
	}
	due := (*list)[:n:n]
	*list = slices.Clone((*list)[n:])
	tries := make(map[string]int, n)
	batch := make([]store.Result, n)
	for i, h := range due {
		batch[i], tries[h.res.ID] = h.res, h.tries
	}
	return batch, tries
}

// lastTry writes the held outcomes once more at shutdown. Those still
// refused keep their lease: the row is sent again when it ends.
func (rec *recorder) lastTry(ctx context.Context) {
	rec.retryUnseen(ctx, time.Now().Add(time.Hour))
	if len(rec.held) == 0 {
		return
	}
	rec.retryHeld(ctx, time.Now().Add(365*24*time.Hour))
	for _, h := range rec.held {
		rec.log.Error("stopping with an outcome the database refuses to write; the row is sent again when its lease ends",
			"id", h.res.ID, "status", h.res.Status)
	}
	rec.held = nil
	rec.counted()
}

// writeFresh writes batch; fresh outcomes whose row the write did not
// find are tried again shortly (tries counts their earlier tries), and the
// fresh rows done with are no longer skipped by this process's sweeps.
func (rec *recorder) writeFresh(ctx context.Context, batch []store.Result, tries map[string]int) {
	unseen := rec.writeTried(ctx, batch, nil)
	again := rec.notSeen(unseen, tries)
	for _, r := range batch {
		if r.Kind.Fresh() && !again[r.ID] {
			rec.fresh.remove(r.ID)
		}
	}
}

// writeTried writes batch, retrying while the database is away; if it never
// comes back before shutdown the rows' leases end and they are sent again,
// with the same event_id. Rows the database refuses are held for another
// try, and so is the whole batch when the database refuses the statement
// whatever its rows; tries counts the earlier tries of rows held before.
func (rec *recorder) writeTried(ctx context.Context, batch []store.Result, tries map[string]int) (unseen []store.Result) {
	b := retry.WithCappedDuration(writeRetryMax, retry.NewExponential(writeRetryMin))
	failed := false
	var refused []store.Refused
	var whole *store.StatementRefused
	err := retry.Do(ctx, b, func(ctx context.Context) error {
		wctx, cancel := context.WithTimeout(ctx, writeTimeout)
		defer cancel()
		var err error
		if refused, unseen, err = rec.store.Record(wctx, batch); err != nil && !errors.As(err, &whole) {
			if !failed {
				rec.log.Error("cannot record delivery outcomes; retrying", "rows", len(batch), "error", err)
				failed = true
			}
			return retry.RetryableError(err)
		}
		return nil
	})
	switch {
	case err != nil:
		rec.log.Error("gave up recording delivery outcomes; the rows are retried when their lease ends", "rows", len(batch), "error", err)
		return nil
	case failed:
		rec.log.Info("recording delivery outcomes again")
	}
	if whole != nil {
		rec.whole.fail(StatementRecord, whole)
		rec.holdAll(batch, whole, tries)
		return nil
	}
	rec.whole.accepted(StatementRecord)
	rec.hold(batch, refused, tries)
	if rec.written != nil {
		rec.written.add(batch, func(id string) bool {
			return slices.ContainsFunc(refused, func(r store.Refused) bool { return r.ID == id })
		})
	}
	if slices.ContainsFunc(batch, func(r store.Result) bool { return r.Status == store.StatusPending }) {
		rec.wake()
	}
	return unseen
}

// wake signals rescheduled.
func (rec *recorder) wake() {
	select {
	case rec.rescheduled <- struct{}{}:
	default: // a wake-up is already pending
	}
}
