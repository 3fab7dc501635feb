package faults

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

// streamGrace is how long every sweeper leaves a fresh row (by its
// next_attempt_at) to a stream that may be sending it (cmd/outbox-relay).
// A held answer outlives it by at least holdMin-streamGrace.
const (
	streamGrace = 5 * time.Second
	holdMin     = streamGrace + 500*time.Millisecond
	holdMax     = streamGrace + time.Second
)

// slowAnswer is a runner that takes holdMin to holdMax to answer some
// requests, longer than the sweepers' grace, and answers the rest at once:
// the first request of every every-th event (0: none), and every request
// that arrives before until (a deploy).
type slowAnswer struct {
	every int

	mu    sync.Mutex
	rng   *rand.Rand
	seen  map[string]bool
	until time.Time
	held  int // requests held past the grace
}

func newSlowAnswer(every int) *slowAnswer {
	return &slowAnswer{every: every, rng: rand.New(rand.NewPCG(11, 3)), seen: map[string]bool{}}
}

// slowFor makes every request arriving in the next d slow.
func (a *slowAnswer) slowFor(d time.Duration) {
	a.mu.Lock()
	a.until = time.Now().Add(d)
	a.mu.Unlock()
}

func (a *slowAnswer) heldCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.held
}

func (a *slowAnswer) answer(w http.ResponseWriter, r *http.Request, _ []byte) bool {
	key := r.Header.Get("Idempotency-Key")
	a.mu.Lock()
	first := !a.seen[key]
	a.seen[key] = true
	slow := (a.every > 0 && first && len(a.seen)%a.every == 0) || time.Now().Before(a.until)
	hold := holdMin + time.Duration(a.rng.Int64N(int64(holdMax-holdMin)))
	if slow {
		a.held++
	}
	a.mu.Unlock()
	if slow {
		// The fault itself: the runner is this slow to answer.
		select {
		case <-time.After(hold):
		case <-r.Context().Done():
			// The relay gave up on the request: it never sees an
			// answer, so the event is not accepted.
			w.WriteHeader(http.StatusServiceUnavailable)
			return false
		}
	}
	w.WriteHeader(http.StatusNoContent)
	return true
}

// Three relays on one table and slot (one streams, two stand by; all sweep
// every 100 ms) and a runner that holds the first request of every tenth
// event for 5.5–6 s, past the 5 s the sweepers leave a fresh row to the
// stream, and answers the rest at once; RELAY_HTTP_TIMEOUT is far above
// that. Whoever sends a row, no other relay may send it while the first
// POST or its outcome write is under way. No relay dies, so there is no
// crash window: every event exactly once.
func TestSlowRunnerPastGrace(t *testing.T) {
	a := newSlowAnswer(10)
	events := scale(300, 3000)
	rate := scale(100, 200)
	// Enough workers that the held POSTs do not stall the others: this
	// test is about time past the grace, not a full queue.
	slowRunner(t, "slow runner past the grace", a, events, rate, "RELAY_CONCURRENCY=64", nil)
}

// The same three relays; the runner, fast at first, holds every request
// that arrives during a few seconds (a deploy) for 5.5–6 s, then is fast
// again. At the default concurrency the workers fill, rows wait in the
// queue and ids are shed to the sweeper, all while POSTs outlive the
// grace. Every event exactly once.
func TestRunnerDeploySlow(t *testing.T) {
	a := newSlowAnswer(0)
	events := scale(500, 3000)
	rate := scale(100, 200)
	window := scale(3, 5)
	slowRunner(t, "runner slow for a deploy", a, events, rate, "", func(rn *relaytest.Runner) {
		pgtest.WaitFor(t, 30*time.Second, "deliveries before the deploy", func() bool { return len(rn.Accepted()) >= events/5 })
		a.slowFor(time.Duration(window) * time.Second)
	})
}

// slowRunner runs three relays with a against events inserted at rate, calls
// during (if any) once the inserts run, and checks that every event was
// accepted exactly once.
func slowRunner(t *testing.T, fault string, a *slowAnswer, events, rate int, extra string, during func(*relaytest.Runner)) {
	d, rn := fresh(t)
	s := newSenders(rn, a.answer)
	env := []string{"RELAY_SWEEP_INTERVAL=100ms", "RELAY_HTTP_TIMEOUT=10s"}
	if extra != "" {
		env = append(env, extra)
	}
	var urls []string
	for range 3 {
		tag, _ := s.tag()
		_, url := withMetrics(t, d, rn, append(env, tag)...)
		urls = append(urls, url)
	}
	// Else the first rows could all be swept before any relay streams,
	// and the stream's path would go untested.
	pgtest.WaitFor(t, 60*time.Second, "one relay to stream and two to stand by", func() bool {
		var streamers, standbys int
		for _, u := range urls {
			if streaming(u) {
				streamers++
			}
			if v, err := scrape(u, `outbox_relay_cdc_role{role="standby"}`); err == nil && v == 1 {
				standbys++
			}
		}
		return streamers == 1 && standbys == 2
	})

	start := time.Now()
	in := startInserter(t, d, rate, 4)
	if during != nil {
		during(rn)
	}
	pgtest.WaitFor(t, 2*time.Minute, "the inserts", func() bool { return in.count() >= events })
	in.stop()
	r := verify(t, d, rn, 2*time.Minute)
	drained := time.Since(start)

	held := a.heldCount()
	if held == 0 {
		t.Errorf("the runner held no request past the grace: the fault never happened")
	}
	if r.Duplicates != 0 {
		t.Errorf("%d duplicates with no relay killed, want 0", r.Duplicates)
	}
	for _, o := range s.outsideWindow() {
		t.Errorf("outside the crash window: %s", o)
	}
	var stream, sweep float64
	for _, u := range urls {
		n, _ := scrape(u, `outbox_relay_deliveries_total{outcome="delivered",path="stream"}`)
		stream += n
		n, _ = scrape(u, `outbox_relay_deliveries_total{outcome="delivered",path="sweep"}`)
		sweep += n
	}
	t.Logf("%d requests held %v–%v; delivered by the stream %v, by a sweep %v; inserts to the last delivery %v",
		held, holdMin, holdMax, stream, sweep, drained.Round(100*time.Millisecond))
	record(t, fault, r, map[string]string{
		"held": strconv.Itoa(held), "stream": fmt.Sprint(stream), "sweep": fmt.Sprint(sweep),
		"drained": drained.Round(100 * time.Millisecond).String(),
	})
}
