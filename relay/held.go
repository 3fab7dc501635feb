package relay

import (
	"slices"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// maxHeld caps the outcomes the recorder holds for another try because the
// database refused to write them. Past it an outcome is dropped, not held:
// its row stays pending in the table, which holds every row whatever this
// process forgets, and once its lease ends (a fresh row: once the sweepers'
// grace passes) a sweep sends it again, with the same event id. So memory
// stays bounded while a trigger refuses every row's outcome, at the price
// of a second send of the rows dropped.
const maxHeld = 1024

// keep holds an outcome for another try, if under the cap, and says
// whether it did; a dropped outcome's row is no longer kept from the
// sweeps. The first drop is logged, and the end of the drops (see counted).
func (rec *recorder) keep(h heldResult) bool {
	if len(rec.held) < rec.maxHeld {
		rec.held = append(rec.held, h)
		return true
	}
	rec.refuse.forget(h.res.ID)
	rec.dropped++
	if !rec.full {
		rec.full = true
		rec.log.Warn("too many outcomes the database refuses to write are held; those past the cap are dropped, and their rows are sent again after their lease",
			"cap", rec.maxHeld)
	}
	return false
}

// holdAll holds every outcome of a batch whose statement the database
// refused whatever its rows, until the refusal's next try. Their rows are
// kept from the sweeps and listed like other refused rows, but not logged
// one by one: statementRefusals logs the refusal once.
func (rec *recorder) holdAll(batch []store.Result, e *store.StatementRefused, tries map[string]int) {
	now := time.Now()
	next := now.Add(rec.whole.wait(now))
	ids := make([]string, 0, len(batch))
	for _, r := range batch {
		if rec.keep(heldResult{res: r, next: next, tries: tries[r.ID] + 1}) {
			ids = append(ids, r.ID)
		}
	}
	rec.refuse.quiet(StatementRecord, ids, e)
	slices.SortFunc(rec.held, func(a, b heldResult) int { return a.next.Compare(b.next) })
	rec.counted()
}

// counted publishes how many outcomes are held, and once none is left
// after some were dropped, says how many were.
func (rec *recorder) counted() {
	rec.heldN.Store(int32(len(rec.held)))
	if rec.full && len(rec.held) == 0 {
		rec.log.Info("every held outcome is written or dropped; the rows of the dropped ones are sent again",
			"dropped", rec.dropped)
		rec.full, rec.dropped = false, 0
	}
}

// hold keeps the refused outcomes of batch for another try and forgets the
// refusals of those written.
func (rec *recorder) hold(batch []store.Result, refused []store.Refused, tries map[string]int) {
	rec.refuse.note(StatementRecord, refused)
	if len(refused) == 0 && len(tries) == 0 && rec.refuse.n.Load() == 0 {
		return
	}
	isRefused := make(map[string]bool, len(refused))
	for _, r := range refused {
		isRefused[r.ID] = true
	}
	now := time.Now()
	for _, r := range batch {
		if !isRefused[r.ID] {
			rec.refuse.clear(r.ID)
			continue
		}
		n := tries[r.ID] + 1
		rec.keep(heldResult{res: r, next: now.Add(refusalBackoff(n)), tries: n})
	}
	slices.SortFunc(rec.held, func(a, b heldResult) int { return a.next.Compare(b.next) })
	rec.counted()
}
