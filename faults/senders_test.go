package faults

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

// senders tells the runner which relay process sent each request, so that
// a duplicate can be judged, not only counted: each relay under test
// POSTs to the runner's URL with its own ?relay=N (the runner serves any
// path and query, and the relay keeps the query of RELAY_RUNNER_URL).
//
// The documented window for a duplicate is a relay killed between a POST
// and the write of its outcome. Inside it, an event is accepted first from
// a relay that was then killed and again from another one. An event
// accepted twice from one relay, or again after a relay that was never
// killed, is outside the window whatever the timing: that is what two
// senders overlapping (a sweeper taking a row a stream is still sending,
// an outcome write that lost its row to another claim) looks like from
// outside.
type senders struct {
	base string // the runner's URL

	mu     sync.Mutex
	n      int              // relays tagged so far
	killed map[int]bool     // relays the test killed
	by     map[string][]int // event id → the relay of each acceptance, in order
}

// newSenders makes rn record senders; answer decides each answer as with
// SetAnswer (nil accepts everything with 204).
func newSenders(rn *relaytest.Runner, answer relaytest.Answer) *senders {
	s := &senders{base: rn.URL(), killed: map[int]bool{}, by: map[string][]int{}}
	rn.SetAnswer(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		ok := true
		if answer == nil {
			w.WriteHeader(http.StatusNoContent)
		} else {
			ok = answer(w, r, body)
		}
		if ok {
			key := r.Header.Get("Idempotency-Key")
			s.mu.Lock()
			s.by[key] = append(s.by[key], relayOf(r))
			s.mu.Unlock()
		}
		return ok
	})
	return s
}

// relayOf is the number of the relay that sent r (see tag), -1 for an
// untagged request: never a killed relay, so judged outside the window.
func relayOf(r *http.Request) int {
	relay, err := strconv.Atoi(r.URL.Query().Get("relay"))
	if err != nil {
		return -1
	}
	return relay
}

// tag is the environment variable that makes the next relay's requests
// its own, and that relay's number.
func (s *senders) tag() (string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.n
	s.n++
	return "RELAY_RUNNER_URL=" + s.base + "?relay=" + strconv.Itoa(n), n
}

// kill notes that relay n is being killed; call it before the SIGKILL.
func (s *senders) kill(n int) {
	s.mu.Lock()
	s.killed[n] = true
	s.mu.Unlock()
}

// outsideWindow describes every event accepted more than once other than
// in the crash window: some acceptance follows one from the same relay or
// from a relay that was not killed.
func (s *senders) outsideWindow() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for key, relays := range s.by {
		for i := 1; i < len(relays); i++ {
			if prev := relays[i-1]; prev == relays[i] || !s.killed[prev] {
				out = append(out, fmt.Sprintf("event %s accepted from relays %v in that order (killed: %v)", key, relays, s.killedList()))
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

// resentAfter counts, for each relay, the acceptances of events it had
// sent that followed its own: the duplicates its death left behind (or,
// outside the window, its overlap with another sender).
func (s *senders) resentAfter() map[int]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[int]int{}
	for _, relays := range s.by {
		for i := 1; i < len(relays); i++ {
			out[relays[i-1]]++
		}
	}
	return out
}

// killedList is the killed relays in order; s.mu is held.
func (s *senders) killedList() []int {
	var out []int
	for n := range s.killed {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}
