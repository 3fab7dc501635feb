package relay

import (
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// Outcomes of an attempt, as reported to the Observer.
const (
	OutcomeDelivered = "delivered"
	OutcomeRetry     = "retry"
	OutcomeDead      = "dead"
)

// maxErrorLen bounds last_error.
const maxErrorLen = 1024

// answer is what one POST came back with: a status code and its
// Retry-After, or err when there was no answer at all.
type answer struct {
	code       int
	retryAfter time.Duration
	err        error
}

// describe is the answer as last_error says it.
func (a answer) describe() string {
	if a.err != nil {
		return a.err.Error()
	}
	return fmt.Sprintf("runner answered %d%s", a.code, retryAfterNote(a.retryAfter))
}

// decide turns the answer to an attempt at row r into the outcome to
// record, and its label for the Observer: a 2xx is delivered; a failure
// the breaker blames on the runner is retried with the attempt given back
// (see blame); any other answer that cannot succeed later is dead at once;
// the rest is retried after the backoff, or Retry-After when longer, until
// attempt maxAttempts, which is dead.
func decide(r *store.Row, a answer, who blame, maxAttempts int, backoff Backoff, now time.Time) (store.Result, string) {
	res := store.Result{ID: r.ID, Attempt: r.Attempt}
	switch {
	case delivered(a):
		res.Status = store.StatusDelivered
	case who == blameRunner:
		// Due again at once: the breaker, not the row's backoff, decides
		// when the runner is tried again, and on its return every row
		// goes without waiting for a backoff.
		res.Status, res.Kind, res.Next = store.StatusPending, store.KindUncounted, now
		res.Error = a.describe() + " (not counted: the runner is down)"
	case who == blameThrottle:
		res.Status, res.Kind = store.StatusPending, store.KindUncounted
		res.Next = now.Add(max(backoff.Delay(r.Attempt), a.retryAfter))
		res.Error = a.describe() + " (not counted: the runner asked for less)"
	case a.err == nil && !retryable(a.code):
		res.Status = store.StatusDead
		res.Error = fmt.Sprintf("runner answered %d (permanent)", a.code)
	default:
		msg := a.describe()
		if r.Attempt >= maxAttempts {
			res.Status = store.StatusDead
			res.Error = fmt.Sprintf("gave up after %d attempts: %s", r.Attempt, msg)
			break
		}
		res.Status = store.StatusPending
		res.Next = now.Add(max(backoff.Delay(r.Attempt), a.retryAfter))
		res.Error = msg
	}
	res.Error = truncate(res.Error, maxErrorLen)
	return res, outcomes[res.Status]
}

// outcomes labels each status a Result can carry.
var outcomes = map[string]string{
	store.StatusDelivered: OutcomeDelivered,
	store.StatusPending:   OutcomeRetry,
	store.StatusDead:      OutcomeDead,
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
