package relay

import (
	"log/slog"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Runner states, as /readyz, status and the runner_state metric show them.
const (
	// RunnerClosed: the runner answers; rows are claimed and sent.
	RunnerClosed = "closed"
	// RunnerOpen: the runner is down; nothing is claimed but a probe
	// from time to time.
	RunnerOpen = "open"
	// RunnerProbing: the runner is down and one probe is in flight.
	RunnerProbing = "probing"
)

// RunnerStates lists the states, for metrics.
var RunnerStates = []string{RunnerClosed, RunnerOpen, RunnerProbing}

// RunnerState is what the breaker says of the runner as a whole.
type RunnerState struct {
	State string    `json:"state"`
	Since time.Time `json:"since"`
	// ConcurrencyLimit is how many POSTs may be in flight now, between 1
	// and RELAY_CONCURRENCY: halved when the runner answers 429 or 503.
	ConcurrencyLimit int `json:"concurrency_limit"`
	// PausedUntil is the end of a Retry-After pause of claiming, if one
	// runs.
	PausedUntil *time.Time `json:"paused_until,omitempty"`
	// LastError is the last failure of the runner as a whole while the
	// breaker is not closed.
	LastError string `json:"last_error,omitempty"`
	Probes    int    `json:"probes,omitempty"` // sent since it opened
}

// Defaults of the breaker; Config.ProbeMax overrides the cap.
const (
	// failuresToOpen consecutive runner-wide failures, with no answer from
	// the runner between them and none sent more than the breaker's
	// streakGap after the one before, open the breaker. A lone reset or
	// timeout does not; a runner that refuses every connection opens it
	// within the first wave of requests.
	failuresToOpen = 5
	// probeMin is the wait before the first probe; it doubles after each
	// failed probe up to Config.ProbeMax.
	probeMin = time.Second
	// DefaultProbeMax is the cap on the wait between probes: a runner back
	// from a deploy is found within it.
	DefaultProbeMax = 5 * time.Second
	// maxPause bounds a Retry-After pause of claiming.
	maxPause = time.Minute
	// holdOpen in breaker.hold means the breaker is open or probing.
	holdOpen = math.MaxInt64
)

// breaker watches the runner as a whole. It opens after failuresToOpen
// runner-wide failures in a row, with no answer from the runner between
// them; while open nothing is claimed, and one probe at a time (a real due
// row, the oldest) is sent at growing intervals; the first 2xx closes it
// and claiming resumes at once at full concurrency. Which attempts count
// towards dead is its rule too: see whose (attempts.go).
//
// It also applies the runner's back-pressure: a 429 or 503 halves the
// concurrency limit (once per round of requests: an answer to a request
// sent before the last halving does not halve again) and, with
// Retry-After, pauses claiming for that long, up to maxPause. Each run of
// limit successes in a row raises the limit by one, back to the maximum.
//
// The hot path of a healthy runner costs atomic loads only: hold (may rows
// be claimed and sent), limit (may worker i take a job) and calm (does a
// success change anything).
type breaker struct {
	log      *slog.Logger
	max      int
	probeMax time.Duration
	wake     func() // tells the sweeper that claiming resumed

	hold  atomic.Int64 // 0, holdOpen, or the UnixNano end of a pause
	limit atomic.Int32
	calm  atomic.Bool // closed, no failure streak, full limit

	// Connection errors in the current second, for blip.
	blipSecond, blips atomic.Int64

	mu          sync.Mutex
	state       string
	since       time.Time
	streak      int           // runner-wide failures in a row
	lastWide    time.Time     // when the last runner-wide failure came
	streakGap   time.Duration // see streakGap
	run         int           // successes in a row since the limit last moved
	halved      time.Time
	pausedUntil time.Time
	lastErr     string
	interval    time.Duration // between probes, doubling
	nextProbe   time.Time
	probe       uint64 // the probe in flight; 0 when none
	probes      int    // since the breaker opened
	lastProbe   uint64 // the id of the last probe handed out
	grown       chan struct{}
}

func newBreaker(log *slog.Logger, concurrency int, probeMax time.Duration, backoff Backoff, wake func()) *breaker {
	if probeMax <= 0 {
		probeMax = DefaultProbeMax
	}
	b := &breaker{log: log, max: concurrency, probeMax: probeMax, wake: wake,
		streakGap: streakGap(backoff, probeMax),
		state:     RunnerClosed, since: time.Now(), grown: make(chan struct{})}
	b.limit.Store(int32(concurrency))
	b.calm.Store(true)
	return b
}

// admit reports whether rows may be claimed now: the breaker is closed
// and no Retry-After pause runs.
func (b *breaker) admit() bool {
	h := b.hold.Load()
	if h == 0 {
		return true
	}
	if h == holdOpen || time.Now().UnixNano() < h {
		return false
	}
	b.hold.CompareAndSwap(h, 0) // the pause is over
	return true
}

// down reports whether the breaker is open or probing: rows claimed
// before are not sent but given back.
func (b *breaker) down() bool { return b.hold.Load() == holdOpen }

// quickRetriesPerSecond bounds the in-process retries of connection
// errors: enough for a stale keep-alive connection or a lone reset, too
// few to multiply the first wave of requests to a runner that just died.
const quickRetriesPerSecond = 2

// blip reports whether a connection error may be retried in process: the
// breaker is calm and few errors came this second. Called on errors only.
func (b *breaker) blip(now time.Time) bool {
	if !b.calm.Load() {
		return false
	}
	if sec := now.Unix(); b.blipSecond.Swap(sec) != sec {
		b.blips.Store(0)
	}
	return b.blips.Add(1) <= quickRetriesPerSecond
}

// await returns once worker i is within the concurrency limit, or stop is
// closed.
func (b *breaker) await(i int, stop <-chan struct{}) {
	for i >= int(b.limit.Load()) {
		b.mu.Lock()
		grown := b.grown
		within := i < int(b.limit.Load())
		b.mu.Unlock()
		if within {
			return
		}
		select {
		case <-grown:
		case <-stop:
			return
		}
	}
}

// observe takes the answer to a POST sent at sentAt (probe is the probe's
// id, 0 for other rows), moves the breaker and the limit, and says whose
// failure the answer is.
func (b *breaker) observe(a answer, sentAt time.Time, probe uint64) blame {
	ok := delivered(a)
	if ok && probe == 0 && b.calm.Load() {
		return blameRow
	}
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	defer b.settle()
	wide := runnerWide(a)
	switch {
	case ok:
		b.streak = 0
		if b.state != RunnerClosed {
			b.close(now)
		}
		b.grow()
	case wide:
		if sentAt.After(b.lastWide.Add(b.streakGap)) {
			b.streak = 0 // the runner went untried since: a new streak
		}
		b.streak++
		b.lastWide = now
		b.run = 0
		b.lastErr = a.describe()
		if b.state == RunnerClosed && b.streak >= failuresToOpen {
			b.open(now)
		}
	default: // the runner answered
		b.streak = 0
	}
	if a.err == nil && (a.code == http.StatusTooManyRequests || a.code == http.StatusServiceUnavailable) {
		b.backOff(now, sentAt, a.retryAfter)
	}
	if probe != 0 && probe == b.probe {
		b.probe = 0
		if !ok {
			b.probeFailed(now)
		}
	}
	return b.whose(a, probe)
}

// settle publishes the state for the hot path; b.mu is held.
func (b *breaker) settle() {
	switch {
	case b.state != RunnerClosed:
		b.hold.Store(holdOpen)
	case time.Now().Before(b.pausedUntil):
		b.hold.Store(b.pausedUntil.UnixNano())
	default:
		b.hold.Store(0)
	}
	b.calm.Store(b.state == RunnerClosed && b.streak == 0 && int(b.limit.Load()) == b.max)
}

func (b *breaker) open(now time.Time) {
	b.state, b.since = RunnerOpen, now
	b.interval = min(probeMin, b.probeMax)
	b.nextProbe = now.Add(b.interval)
	b.probes = 0
	b.log.Warn("runner down: claiming paused, probing with one row at a time; attempts meanwhile do not count",
		"failures", b.streak, "error", b.lastErr, "probe_every_max", b.probeMax)
}

func (b *breaker) close(now time.Time) {
	b.log.Info("runner back: claiming resumed at full concurrency",
		"down_for", now.Sub(b.since).Round(time.Millisecond), "probes", b.probes)
	b.state, b.since = RunnerClosed, now
	b.probe, b.lastErr = 0, ""
	b.setLimit(b.max)
	b.wake()
}

func (b *breaker) probeFailed(now time.Time) {
	if b.state != RunnerProbing {
		return
	}
	b.state = RunnerOpen
	b.interval = min(2*b.interval, b.probeMax)
	b.nextProbe = now.Add(b.interval)
	b.log.Debug("probe failed; runner still down", "next_in", b.interval, "error", b.lastErr)
}

// backOff halves the limit, once per round of requests, and pauses claims
// for Retry-After.
func (b *breaker) backOff(now, sentAt time.Time, retryAfter time.Duration) {
	if sentAt.After(b.halved) && b.limit.Load() > 1 {
		b.halved = now
		b.setLimit(max(1, int(b.limit.Load())/2))
		b.log.Debug("runner asks for less: concurrency halved", "limit", b.limit.Load())
	}
	if retryAfter > 0 {
		if end := now.Add(min(retryAfter, maxPause)); end.After(b.pausedUntil) {
			b.pausedUntil = end
			b.log.Debug("runner asks for a pause: claiming paused", "for", min(retryAfter, maxPause))
		}
	}
}

// grow counts a success: each run of limit successes raises the limit by
// one.
func (b *breaker) grow() {
	l := int(b.limit.Load())
	if l >= b.max {
		return
	}
	if b.run++; b.run >= l {
		b.setLimit(l + 1)
	}
}

func (b *breaker) setLimit(n int) {
	b.run = 0
	old := b.limit.Swap(int32(n))
	if n > int(old) {
		close(b.grown)
		b.grown = make(chan struct{})
	}
}

// mayProbe hands out a probe when the breaker is open and the next probe
// is due; it returns the probe's id, 0 when none may go.
func (b *breaker) mayProbe(now time.Time) uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != RunnerOpen || now.Before(b.nextProbe) || now.Before(b.pausedUntil) {
		return 0
	}
	b.lastProbe++
	b.probe, b.state = b.lastProbe, RunnerProbing
	b.probes++
	return b.probe
}

// probeDone is told of a probe that was not sent (no row was due, the
// claim failed, the relay is stopping): the next one goes after the same
// interval.
func (b *breaker) probeDone(id uint64) {
	if id == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if id != b.probe {
		return
	}
	b.probe = 0
	if b.state == RunnerProbing {
		b.state = RunnerOpen
		b.nextProbe = time.Now().Add(b.interval)
	}
}

// paused is how long claiming waits from now: until the next probe while
// open, a probe's interval while probing (its answer wakes the sweeper),
// the rest of a Retry-After pause; 0 when rows may be claimed.
func (b *breaker) paused(now time.Time) time.Duration {
	if b.hold.Load() == 0 {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case RunnerOpen:
		return max(b.nextProbe.Sub(now), b.pausedUntil.Sub(now), time.Millisecond)
	case RunnerProbing:
		return b.interval
	}
	return max(b.pausedUntil.Sub(now), 0)
}

func (b *breaker) snapshot() RunnerState {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := RunnerState{State: b.state, Since: b.since, ConcurrencyLimit: int(b.limit.Load())}
	if b.state != RunnerClosed {
		s.Probes, s.LastError = b.probes, b.lastErr
	}
	if time.Now().Before(b.pausedUntil) {
		p := b.pausedUntil
		s.PausedUntil = &p
	}
	return s
}
