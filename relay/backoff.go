package relay

import (
	"math/rand/v2"
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
