package relay

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sethvargo/go-retry"
)

// Backoff is the retry policy: exponential from Base, capped at Max, with
// up to Jitter (a fraction) taken off at random so that rows that failed
// together do not come back together.
type Backoff struct {
	Base, Max time.Duration
	Jitter    float64
	// Rand returns a number in [0,1); nil uses math/rand/v2. Tests fix it.
	Rand func() float64
}

// Delay is the wait after the attempt-th failed attempt (1 for the first):
// min(Max, Base·2^(attempt-1)), less up to Jitter of it. Jitter only
// shortens the delay, so Max is a true cap.
func (b Backoff) Delay(attempt int) time.Duration {
	exp := retry.WithCappedDuration(b.Max, retry.NewExponential(b.Base))
	var d time.Duration
	for range max(1, min(attempt, 64)) {
		d, _ = exp.Next()
	}
	r := rand.Float64
	if b.Rand != nil {
		r = b.Rand
	}
	return d - time.Duration(float64(d)*b.Jitter*r())
}

// maxRetryAfter bounds what a runner can ask for; a day is already more
// than any sane maintenance window.
const maxRetryAfter = 24 * time.Hour

// ParseRetryAfter reads a Retry-After header: delay-seconds or an HTTP
// date (RFC 9110 §10.2.3). ok is false for a missing or malformed value.
func ParseRetryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if v[0] >= '0' && v[0] <= '9' {
		secs, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			if ne, isNum := err.(*strconv.NumError); isNum && ne.Err == strconv.ErrRange {
				return maxRetryAfter, true
			}
			return 0, false
		}
		return min(time.Duration(min(secs, uint64(maxRetryAfter/time.Second)))*time.Second, maxRetryAfter), true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return min(max(t.Sub(now), 0), maxRetryAfter), true
}
