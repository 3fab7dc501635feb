package relay

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// statementRefusals are the statements the database refuses whatever rows
// they write (store.StatementRefused): a privilege revoked from the
// relay's role, a statement-level trigger. Halving such a statement only
// repeats the refusal about twice per row, and a row sent meanwhile gets
// an outcome that cannot be written (it would be sent again), so while one
// is refused the relay backs off as a whole: it claims nothing, sends
// nothing (what is queued is given back), holds the outcomes it has (up
// to maxHeld), and when the backoff ends tries again: a sweep claims one
// row, the held outcomes are written. A statement the database accepts
// ends its refusal, and so does a whole backoff past its retry without it
// being refused again (nothing tried it: a release is rare; the next one
// that is refused starts it again). Each change is logged once, and each
// refused statement is counted as a write error of its statement.
type statementRefusals struct {
	log *slog.Logger
	obs Observer

	n  atomic.Int32 // len(by), read without the lock on the hot path
	mu sync.Mutex
	by map[string]*statementRefusal // by statement
}

type statementRefusal struct {
	since, next time.Time
	tries       int
}

// statementBackoff is the wait before a statement refused as a whole is
// tried again: from a second, doubling, up to 30 s. The refusal ends when
// an operator fixes a grant or drops a trigger; the relay notices soon.
func statementBackoff(tries int) time.Duration {
	return min(time.Second<<min(tries-1, 5), 30*time.Second)
}

func newStatementRefusals(log *slog.Logger, obs Observer) *statementRefusals {
	return &statementRefusals{log: log, obs: obs, by: map[string]*statementRefusal{}}
}

// refused notes how the database took a statement: err refusing it as a
// whole starts or prolongs its refusal, and says so (true); no error ends
// it. Other errors (the database away, one row refused) change nothing.
func (s *statementRefusals) refused(statement string, err error) bool {
	var whole *store.StatementRefused
	switch {
	case errors.As(err, &whole):
		s.fail(statement, whole)
		return true
	case err == nil:
		s.accepted(statement)
	}
	return false
}

// fail starts or prolongs the refusal of statement and returns when it is
// tried again. A refusal met within the backoff (by a statement already
// under way when it began) does not lengthen it.
func (s *statementRefusals) fail(statement string, e *store.StatementRefused) time.Time {
	s.obs.ObserveWriteError(statement)
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.by[statement]
	if !ok {
		r = &statementRefusal{since: now}
		s.by[statement] = r
		s.n.Store(int32(len(s.by)))
		s.log.Error("the database refuses a statement of the relay whatever its rows; claiming and sending wait, and it is tried again with backoff",
			"statement", statement, "sqlstate", e.SQLState, "error", e.Message)
	}
	if !now.Before(r.next) {
		r.tries++
		r.next = now.Add(statementBackoff(r.tries))
	}
	return r.next
}

// accepted ends the refusal of statement, if any.
func (s *statementRefusals) accepted(statement string) {
	if s.n.Load() == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.by[statement]; ok {
		delete(s.by, statement)
		s.n.Store(int32(len(s.by)))
		s.log.Info("the database accepts the statement again", "statement", statement,
			"refused_for", time.Since(r.since).Round(time.Millisecond), "tries", r.tries)
	}
}

// active says whether some statement is refused: a claim then takes one
// row at most, and only the sweep claims.
func (s *statementRefusals) active() bool {
	if s.n.Load() == 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.prune(time.Now())
	return len(s.by) > 0
}

// wait is how long claiming and sending wait from now: until every
// refused statement may be tried again; 0 when none is refused.
func (s *statementRefusals) wait(now time.Time) time.Duration {
	if s.n.Load() == 0 {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.prune(now)
	var d time.Duration
	for _, r := range s.by {
		d = max(d, r.next.Sub(now))
	}
	return d
}

// prune ends the refusals that were due for a whole backoff without being
// met again.
func (s *statementRefusals) prune(now time.Time) {
	for statement, r := range s.by {
		if now.After(r.next.Add(statementBackoff(r.tries))) {
			delete(s.by, statement)
			s.log.Info("a statement the database refused was not refused again since its retry was due; claiming resumes",
				"statement", statement, "refused_for", now.Sub(r.since).Round(time.Millisecond), "tries", r.tries)
		}
	}
	s.n.Store(int32(len(s.by)))
}
