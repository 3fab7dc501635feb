package faults

import (
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// journal is the soak's runner: it checks each request's Standard
// Webhooks signature, answers as the runner's current fault says, and
// keeps every request it answered, by event id.
type journal struct {
	secret string
	wh     *standardwebhooks.Webhook

	mu      sync.Mutex
	mode    string     // "" (healthy), "503" or "slow"
	rng     *rand.Rand // the delays of a slow runner
	streak  map[int]int
	refused map[string]int
	got     map[string][]request
	badSigs int
}

// request is one request the runner answered.
type request struct {
	at    time.Time // when it was answered
	relay int       // relayOf
	code  int
	data  json.RawMessage // the body's data: the payload as sent
	kind  string          // the soak's transaction kind, read from data
}

func (q request) accepted() bool { return q.code < 300 }

// soakPayload is what the checks read of an event's payload.
type soakPayload struct {
	Kind  string `json:"kind"`
	Flaky int    `json:"flaky"` // refuse the event this many times
	A0    int    `json:"a0"`    // the attempts it was inserted with
}

func newJournal(t *testing.T, secret string, seed uint64) *journal {
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	return &journal{secret: secret, wh: wh, rng: rand.New(rand.NewPCG(seed, 7)),
		streak: map[int]int{}, refused: map[string]int{}, got: map[string][]request{}}
}

// answer is the relaytest.Answer of the soak's runner.
func (j *journal) answer(w http.ResponseWriter, r *http.Request, raw []byte) bool {
	var body struct {
		Data json.RawMessage `json:"data"`
	}
	_ = json.Unmarshal(raw, &body)
	var p soakPayload
	_ = json.Unmarshal(body.Data, &p)
	sigErr := j.wh.Verify(raw, r.Header)
	id, relay := r.Header.Get("Idempotency-Key"), relayOf(r)
	code, delay := j.decide(relay, id, p.Flaky)
	if delay > 0 {
		time.Sleep(delay) // the slow runner's answer time
	}
	j.mu.Lock()
	if sigErr != nil {
		j.badSigs++
	}
	j.got[id] = append(j.got[id], request{at: time.Now(), relay: relay, code: code, data: body.Data, kind: p.Kind})
	j.mu.Unlock()
	w.WriteHeader(code)
	return code < 300
}

// maxStreak bounds the 503s a flaky event gets from the runner in a row,
// per relay, with no 2xx to that relay between: the relay's breaker opens
// only after 5 runner-wide failures in a row, so a flaky event's 503s are
// answers of a closed breaker and count as attempts.
const maxStreak = 2

// decide is the answer to a request of relay for event id, and how long
// to hold it first.
func (j *journal) decide(relay int, id string, flaky int) (code int, delay time.Duration) {
	j.mu.Lock()
	defer j.mu.Unlock()
	switch {
	case j.mode == "503":
		return http.StatusServiceUnavailable, 0
	case j.mode == "slow":
		return http.StatusNoContent, time.Duration(100+j.rng.IntN(900)) * time.Millisecond
	case j.refused[id] < flaky && j.streak[relay] < maxStreak:
		j.refused[id]++
		j.streak[relay]++
		return http.StatusServiceUnavailable, 0
	}
	j.streak[relay] = 0
	return http.StatusNoContent, 0
}

// setMode sets the runner's fault: "503", "slow", or "" for none.
func (j *journal) setMode(mode string) {
	j.mu.Lock()
	j.mode = mode
	j.mu.Unlock()
}

// requests is every answered request by event id, in answer order.
func (j *journal) requests() map[string][]request {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make(map[string][]request, len(j.got))
	for id, qs := range j.got {
		out[id] = append([]request(nil), qs...)
	}
	return out
}

// badSignatures is how many requests failed the signature check.
func (j *journal) badSignatures() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.badSigs
}
