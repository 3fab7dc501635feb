package relay

import (
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"
)

// testBreakerBackoff makes a streakGap of 2 × 8 s.
var testBreakerBackoff = Backoff{Base: time.Second, Max: time.Minute}

func testBreaker(concurrency int) (*breaker, *int) {
	woken := 0
	return newBreaker(slog.New(slog.NewTextHandler(io.Discard, nil)), concurrency, 4*time.Second, testBreakerBackoff, func() { woken++ }), &woken
}

var (
	ok204       = answer{code: 204}
	connRefused = answer{err: errors.New("runner unreachable: connection refused")}
)

// The rules of the breaker, answer by answer: who is blamed, when it
// opens, probes and closes.
func TestBreakerRules(t *testing.T) {
	b, woken := testBreaker(8)
	sent := time.Now()
	if got := b.observe(connRefused, sent, 0); got != blameRow {
		t.Errorf("first failure of a streak blamed on %v, want the row", got)
	}
	if got := b.observe(answer{code: 500}, sent, 0); got != blameRow || b.streak != 0 {
		t.Errorf("500: blame %v, streak %d; want the row's, and the streak broken (the runner answered)", got, b.streak)
	}
	for i := 1; i <= failuresToOpen; i++ {
		got := b.observe(connRefused, sent, 0)
		if want := blameRunner; i >= 2 && got != want {
			t.Errorf("failure %d of a streak blamed on %v, want the runner", i, got)
		}
	}
	if b.state != RunnerOpen || b.admit() || !b.down() {
		t.Fatalf("after %d failures in a row: state %s, admit %v", failuresToOpen, b.state, b.admit())
	}
	// A request sent before the opening and answered after it was sent to
	// a runner thought up: its answer counts.
	if got := b.observe(answer{code: 404}, sent, 0); got != blameRow {
		t.Errorf("404 to a request sent before the opening blamed on %v, want the row", got)
	}

	now := time.Now()
	if id := b.mayProbe(now); id != 0 {
		t.Error("a probe went before its interval")
	}
	if p := b.paused(now); p < 900*time.Millisecond || p > time.Second {
		t.Errorf("paused %s right after opening, want the first probe interval (1s)", p)
	}
	id := b.mayProbe(now.Add(time.Second))
	if id == 0 || b.state != RunnerProbing || b.mayProbe(now.Add(time.Hour)) != 0 {
		t.Fatalf("probe id %d, state %s: want one probe at a time", id, b.state)
	}
	if got := b.observe(connRefused, sent, id); got != blameRunner || b.state != RunnerOpen || b.interval != 2*time.Second {
		t.Errorf("failed probe: blame %v, state %s, interval %s; want the runner's, open, 2s", got, b.state, b.interval)
	}
	for range 5 { // the interval doubles up to its cap
		b.nextProbe = time.Time{}
		b.observe(connRefused, sent, b.mayProbe(time.Now()))
	}
	if b.interval != 4*time.Second {
		t.Errorf("probe interval %s after many failed probes, want the 4s cap", b.interval)
	}
	// Nothing a probe is answered counts but a 2xx.
	b.nextProbe = time.Time{}
	if got := b.observe(answer{code: 404}, sent, b.mayProbe(time.Now())); got != blameRunner || b.state != RunnerOpen {
		t.Errorf("probe answered 404: blame %v, state %s; want the runner's, open", got, b.state)
	}
	// A probe that could not be sent leaves the interval as it was.
	b.nextProbe = time.Time{}
	b.probeDone(b.mayProbe(time.Now()))
	if b.state != RunnerOpen || b.interval != 4*time.Second {
		t.Errorf("after an unsent probe: %s, %s", b.state, b.interval)
	}

	b.nextProbe = time.Time{}
	if got := b.observe(ok204, sent, b.mayProbe(time.Now())); got != blameRow || b.state != RunnerClosed || !b.admit() || *woken != 1 {
		t.Errorf("2xx probe: blame %v, state %s, woken %d; want closed and the sweeper woken", got, b.state, *woken)
	}
	if !b.calm.Load() || b.limit.Load() != 8 {
		t.Errorf("after closing: calm %v, limit %d; want calm at full concurrency", b.calm.Load(), b.limit.Load())
	}
}

// 429 and 503 halve the limit once per round of requests, Retry-After
// pauses claims, and runs of successes grow the limit back one by one.
func TestBreakerBackPressure(t *testing.T) {
	b, _ := testBreaker(16)
	round := time.Now()
	throttled := answer{code: 429, retryAfter: 2 * time.Second}
	for range 16 { // a whole round answered 429
		if got := b.observe(throttled, round, 0); got != blameThrottle {
			t.Errorf("429 blamed on %v, want back-pressure", got)
		}
	}
	if l := b.limit.Load(); l != 8 {
		t.Errorf("limit %d after a round of 429s, want 8: halved once", l)
	}
	if b.admit() || b.down() {
		t.Error("claiming not paused by Retry-After, or the breaker opened on 429s")
	}
	if p := b.paused(time.Now()); p < time.Second || p > 2*time.Second {
		t.Errorf("paused %s, want about the 2s of Retry-After", p)
	}
	b.observe(answer{code: 503}, time.Now(), 0)
	if l := b.limit.Load(); l != 4 {
		t.Errorf("limit %d after a 503 of the next round, want 4", l)
	}
	for range 4 + 5 + 6 {
		b.observe(ok204, time.Now(), 0)
	}
	if l := b.limit.Load(); l != 7 {
		t.Errorf("limit %d after runs of 4, 5 and 6 successes, want 7", l)
	}
	b.pausedUntil = time.Time{}
	b.settle()
	for range 7 + 8 + 9 + 10 + 11 + 12 + 13 + 14 + 15 + 20 {
		b.observe(ok204, time.Now(), 0)
	}
	if l := b.limit.Load(); l != 16 || !b.calm.Load() || !b.admit() {
		t.Errorf("limit %d, calm %v: want back at 16 and calm", l, b.calm.Load())
	}
}

// A connection error is retried in process only as a blip: while calm,
// and at most quickRetriesPerSecond a second.
func TestBreakerBlip(t *testing.T) {
	b, _ := testBreaker(4)
	now := time.Unix(1000, 0)
	for i := range quickRetriesPerSecond {
		if !b.blip(now) {
			t.Errorf("error %d of the second not retried", i+1)
		}
	}
	if b.blip(now) {
		t.Error("retried past the bound in one second")
	}
	if !b.blip(now.Add(time.Second)) {
		t.Error("not retried in the next second")
	}
	b.observe(connRefused, now, 0)
	if b.blip(now.Add(2 * time.Second)) {
		t.Error("retried while another request had just failed the same way")
	}
}

// Concurrency gate: worker i waiting past the limit goes on when the
// limit grows back, or at once when stopping. (That it does wait shows in
// TestThrottleLowersConcurrency, at the runner.)
func TestBreakerAwait(t *testing.T) {
	b, _ := testBreaker(4)
	b.observe(answer{code: 429}, time.Now(), 0) // limit 2
	passed := make(chan struct{})
	go func() { b.await(3, make(chan struct{})); close(passed) }()
	for range 2 + 3 {
		b.observe(ok204, time.Now(), 0)
	}
	<-passed // limit 4: a hang here fails the test by its timeout
	stop := make(chan struct{})
	close(stop)
	b.observe(answer{code: 429}, time.Now(), 0)
	b.await(3, stop) // returns at once when stopping
}

// A request sent while the breaker is closed and answered counts, whatever
// the answer and whatever came before it: a 503 right after other rows'
// 503s, and one that comes after the breaker opened on them.
func TestBreakerCountsAnsweredRequests(t *testing.T) {
	b, _ := testBreaker(8)
	sent := time.Now()
	for i := 1; i <= failuresToOpen+2; i++ {
		if got := b.observe(answer{code: 503}, sent, 0); got != blameRow {
			t.Errorf("503 %d of a streak blamed on %v, want the row", i, got)
		}
	}
	if b.state != RunnerOpen {
		t.Fatalf("after %d 503s in a row: state %s, want open", failuresToOpen+2, b.state)
	}
	b.nextProbe = time.Time{}
	if got := b.observe(answer{code: 503}, time.Now(), b.mayProbe(time.Now())); got != blameRunner {
		t.Errorf("probe answered 503 blamed on %v, want the runner", got)
	}
	// No answer at all is still the runner's after the first of a streak.
	b, _ = testBreaker(8)
	b.observe(answer{code: 503}, sent, 0)
	if got := b.observe(connRefused, sent, 0); got != blameRunner {
		t.Errorf("connection refused after a 503 blamed on %v, want the runner", got)
	}
}

// Runner-wide failures whose requests went more than streakGap after the
// failure before are not a streak: however many, they neither open the
// breaker nor stop counting. Within the gap they still are one.
func TestBreakerStreakDecays(t *testing.T) {
	b, _ := testBreaker(8)
	if b.streakGap != 16*time.Second {
		t.Fatalf("streakGap %s, want twice the 8 s before a 4th retry", b.streakGap)
	}
	for i := 1; i <= 3*failuresToOpen; i++ {
		b.lastWide = b.lastWide.Add(-b.streakGap - time.Second) // the failure before came long ago
		if got := b.observe(connRefused, time.Now(), 0); got != blameRow {
			t.Errorf("failure %d, long after the one before, blamed on %v, want the row", i, got)
		}
	}
	if b.state != RunnerClosed || b.streak != 1 {
		t.Errorf("after failures spread over time: state %s, streak %d; want closed, 1", b.state, b.streak)
	}
	for range failuresToOpen - 1 {
		b.lastWide = b.lastWide.Add(-b.streakGap + time.Second)
		b.observe(connRefused, time.Now(), 0)
	}
	if b.state != RunnerOpen {
		t.Errorf("after %d failures each within the gap: state %s, want open", failuresToOpen, b.state)
	}
}
