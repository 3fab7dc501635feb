package relay

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// timeoutErr is what the HTTP client reports when a POST ran out of time.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

var _ net.Error = timeoutErr{}

func TestDecide(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	backoff := Backoff{Base: time.Second, Max: time.Minute} // no jitter: Delay(n) = 2^(n-1) s
	refused := describe(&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED})
	for _, tc := range []struct {
		name    string
		attempt int
		ans     answer
		status  string
		outcome string
		next    time.Duration // after now; 0: no next attempt
		err     string
	}{
		{"200", 1, answer{code: 200}, store.StatusDelivered, OutcomeDelivered, 0, ""},
		{"204 on the last attempt", 5, answer{code: 204}, store.StatusDelivered, OutcomeDelivered, 0, ""},
		{"299", 1, answer{code: 299}, store.StatusDelivered, OutcomeDelivered, 0, ""},
		{"400", 1, answer{code: 400}, store.StatusDead, OutcomeDead, 0, "runner answered 400 (permanent)"},
		{"404", 2, answer{code: 404}, store.StatusDead, OutcomeDead, 0, "runner answered 404 (permanent)"},
		{"422 ignores Retry-After", 1, answer{code: 422, retryAfter: time.Hour}, store.StatusDead, OutcomeDead, 0, "runner answered 422 (permanent)"},
		{"302 is not followed", 1, answer{code: 302}, store.StatusDead, OutcomeDead, 0, "runner answered 302 (permanent)"},
		{"1xx", 1, answer{code: 101}, store.StatusDead, OutcomeDead, 0, "runner answered 101 (permanent)"},
		{"408", 1, answer{code: 408}, store.StatusPending, OutcomeRetry, time.Second, "runner answered 408"},
		{"425", 2, answer{code: 425}, store.StatusPending, OutcomeRetry, 2 * time.Second, "runner answered 425"},
		{"429", 3, answer{code: 429}, store.StatusPending, OutcomeRetry, 4 * time.Second, "runner answered 429"},
		{"500", 1, answer{code: 500}, store.StatusPending, OutcomeRetry, time.Second, "runner answered 500"},
		{"503 backoff capped", 20, answer{code: 503}, store.StatusPending, OutcomeRetry, time.Minute, "runner answered 503"},
		{"Retry-After longer than the backoff", 1, answer{code: 503, retryAfter: 30 * time.Second}, store.StatusPending, OutcomeRetry, 30 * time.Second, "runner answered 503, Retry-After 30s"},
		{"Retry-After shorter than the backoff", 4, answer{code: 429, retryAfter: time.Second}, store.StatusPending, OutcomeRetry, 8 * time.Second, "runner answered 429, Retry-After 1s"},
		{"timeout", 1, answer{err: describe(timeoutErr{})}, store.StatusPending, OutcomeRetry, time.Second, "runner timed out"},
		{"connection refused", 2, answer{err: refused}, store.StatusPending, OutcomeRetry, 2 * time.Second, "runner unreachable: dial tcp: connection refused"},
		{"cancelled", 1, answer{err: describe(context.Canceled)}, store.StatusPending, OutcomeRetry, time.Second, "cancelled at shutdown"},
		{"last attempt 503", 25, answer{code: 503}, store.StatusDead, OutcomeDead, 0, "gave up after 25 attempts: runner answered 503"},
		{"past the last attempt", 26, answer{code: 500, retryAfter: 2 * time.Second}, store.StatusDead, OutcomeDead, 0, "gave up after 26 attempts: runner answered 500, Retry-After 2s"},
		{"last attempt timed out", 25, answer{err: describe(timeoutErr{})}, store.StatusDead, OutcomeDead, 0, "gave up after 25 attempts: runner timed out"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			row := &store.Row{ID: "7", Attempt: tc.attempt}
			res, outcome := decide(row, tc.ans, blameRow, 25, backoff, now)
			want := store.Result{ID: "7", Attempt: tc.attempt, Status: tc.status, Error: tc.err}
			if tc.next != 0 {
				want.Next = now.Add(tc.next)
			}
			if res != want || outcome != tc.outcome {
				t.Errorf("decide = %+v, %q; want %+v, %q", res, outcome, want, tc.outcome)
			}
		})
	}
}

// A failure blamed on the runner gives the attempt back whatever the
// answer, even on the last attempt: due at once when the runner is down,
// after the backoff or Retry-After when it asked for less.
func TestDecideBlame(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	backoff := Backoff{Base: time.Second, Max: time.Minute}
	for _, tc := range []struct {
		name    string
		who     blame
		ans     answer
		attempt int
		want    store.Result
	}{
		{"down, last attempt", blameRunner, answer{code: 503}, 25, store.Result{Status: store.StatusPending, Kind: store.KindUncounted, Next: now,
			Error: "runner answered 503 (not counted: the runner is down)"}},
		{"down, permanent answer to a probe", blameRunner, answer{code: 404}, 3, store.Result{Status: store.StatusPending, Kind: store.KindUncounted, Next: now,
			Error: "runner answered 404 (not counted: the runner is down)"}},
		{"down, delivered", blameRunner, answer{code: 200}, 3, store.Result{Status: store.StatusDelivered}},
		{"429 with Retry-After", blameThrottle, answer{code: 429, retryAfter: 10 * time.Second}, 2, store.Result{Status: store.StatusPending, Kind: store.KindUncounted,
			Next: now.Add(10 * time.Second), Error: "runner answered 429, Retry-After 10s (not counted: the runner asked for less)"}},
		{"429 backoff longer", blameThrottle, answer{code: 429, retryAfter: time.Second}, 3, store.Result{Status: store.StatusPending, Kind: store.KindUncounted,
			Next: now.Add(4 * time.Second), Error: "runner answered 429, Retry-After 1s (not counted: the runner asked for less)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, _ := decide(&store.Row{ID: "7", Attempt: tc.attempt}, tc.ans, tc.who, 25, backoff, now)
			tc.want.ID, tc.want.Attempt = "7", tc.attempt
			if res != tc.want {
				t.Errorf("decide = %+v; want %+v", res, tc.want)
			}
		})
	}
}

func TestDecideTruncatesTheError(t *testing.T) {
	for _, tc := range []struct {
		name, err, want string
	}{
		{"long", strings.Repeat("x", 5000), strings.Repeat("x", maxErrorLen)},
		{"rune across the cut", "a" + strings.Repeat("é", 1000), "a" + strings.Repeat("é", maxErrorLen/2-1)},
		{"NUL", "bad\x00byte", "badbyte"},
		{"invalid UTF-8", "bad \xff\xfe byte", "bad \uFFFD byte"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, _ := decide(&store.Row{Attempt: 1}, answer{err: errors.New(tc.err)}, blameRow, 25, Backoff{Base: time.Second, Max: time.Second}, time.Now())
			if res.Error != tc.want {
				t.Errorf("last_error %q (%d bytes), want %q", res.Error, len(res.Error), tc.want)
			}
			if len(res.Error) > maxErrorLen || !utf8.ValidString(res.Error) {
				t.Errorf("last_error is %d bytes, valid UTF-8 %v", len(res.Error), utf8.ValidString(res.Error))
			}
		})
	}
}
