package relay

import (
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// Statements whose writes the database can refuse for one row.
const (
	StatementClaim   = "claim"
	StatementRecord  = "record"
	StatementRelease = "release"
)

// WriteError is a row whose write the database refuses (a constraint, a
// trigger, a row-level security policy), as /readyz and status show it.
// It is listed until a write of the row succeeds.
type WriteError struct {
	ID        string    `json:"id"`
	Statement string    `json:"statement"`
	SQLState  string    `json:"sqlstate"`
	Message   string    `json:"message"`
	Since     time.Time `json:"since"`
	Tries     int       `json:"tries"`
}

// refusals keeps the rows whose writes the database refuses, so that one
// such row never holds up the others: each is logged once, counted, kept
// out of the sweep's claims while it waits for its next try, and listed
// for operators until a write of it succeeds.
type refusals struct {
	log *slog.Logger
	obs Observer

	n    atomic.Int32 // len(rows), read without the lock on the hot path
	mu   sync.Mutex
	rows map[string]*refused
}

type refused struct {
	WriteError
	next time.Time // not claimed again before
	// held: the outcome of a POST waits to be written, so the row must not
	// be claimed (and sent) again by this process at all.
	held bool
	// quiet: refused with its statement as a whole, which is logged once
	// for every row.
	quiet bool
}

// refusalBackoff is the wait before a refused row is tried again: from a
// second, doubling, up to five minutes.
func refusalBackoff(tries int) time.Duration {
	return min(time.Second<<min(tries-1, 9), 5*time.Minute)
}

func newRefusals(log *slog.Logger, obs Observer) *refusals {
	return &refusals{log: log, obs: obs, rows: map[string]*refused{}}
}

// note records refused writes of statement, logging each row once.
func (f *refusals) note(statement string, rs []store.Refused) {
	if len(rs) == 0 {
		return
	}
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range rs {
		f.obs.ObserveWriteError(statement)
		e, ok := f.rows[r.ID]
		if !ok {
			e = &refused{WriteError: WriteError{ID: r.ID, Since: now}}
			f.rows[r.ID] = e
		}
		if !ok || e.quiet {
			e.quiet = false
			f.log.Error("the database refused to write a row; it is retried with backoff, the others go on",
				"id", r.ID, "statement", statement, "sqlstate", r.SQLState, "error", r.Message)
		}
		e.Statement, e.SQLState, e.Message = statement, r.SQLState, r.Message
		e.Tries++
		e.next = now.Add(refusalBackoff(e.Tries))
		e.held = statement == StatementRecord
	}
	f.n.Store(int32(len(f.rows)))
}

// quiet notes rows whose write of statement was refused with the
// statement as a whole: kept from the sweeps and listed like the rows note
// records, but neither logged nor counted one by one (statementRefusals
// does that once for the statement).
func (f *refusals) quiet(statement string, ids []string, e *store.StatementRefused) {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		r, ok := f.rows[id]
		if !ok {
			r = &refused{WriteError: WriteError{ID: id, Since: now}}
			f.rows[id] = r
		}
		r.Statement, r.SQLState, r.Message = statement, e.SQLState, e.Message
		r.Tries++
		r.next = now
		r.held, r.quiet = statement == StatementRecord, true
	}
	f.n.Store(int32(len(f.rows)))
}

// forget drops a row without its write having succeeded: its outcome is
// no longer held, and the row is the sweeps' again.
func (f *refusals) forget(id string) {
	f.mu.Lock()
	delete(f.rows, id)
	f.n.Store(int32(len(f.rows)))
	f.mu.Unlock()
}

// clear forgets rows whose write succeeded.
func (f *refusals) clear(ids ...string) {
	if f.n.Load() == 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		if e, ok := f.rows[id]; ok {
			delete(f.rows, id)
			if !e.quiet {
				f.log.Info("a row refused before was written", "id", id, "statement", e.Statement, "tries", e.Tries)
			}
		}
	}
	f.n.Store(int32(len(f.rows)))
}

// forgetAfter is how long after its next try a refused claim or release is
// kept without being refused again: the row may have been delivered by
// another replica or deleted, and then nothing would clear it.
const forgetAfter = time.Minute

// prune drops refused claims and releases that were not refused again
// within forgetAfter of their next try. Held outcomes stay until written.
func (f *refusals) prune(now time.Time) {
	for id, e := range f.rows {
		if !e.held && now.After(e.next.Add(forgetAfter)) {
			delete(f.rows, id)
		}
	}
	f.n.Store(int32(len(f.rows)))
}

// skip lists the rows the sweep must not claim now.
func (f *refusals) skip() []string {
	if f.n.Load() == 0 {
		return nil
	}
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.prune(now)
	var ids []string
	for id, e := range f.rows {
		if e.held || now.Before(e.next) {
			ids = append(ids, id)
		}
	}
	return ids
}

// list is every row refused, oldest first.
func (f *refusals) list() []WriteError {
	f.mu.Lock()
	f.prune(time.Now())
	out := make([]WriteError, 0, len(f.rows))
	for _, e := range f.rows {
		out = append(out, e.WriteError)
	}
	f.mu.Unlock()
	slices.SortFunc(out, func(a, b WriteError) int {
		if c := a.Since.Compare(b.Since); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}
