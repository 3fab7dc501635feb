package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

// runner is the demo's stand-in for the service that acts on events. It
// checks each request's Standard Webhooks signature, prints what it got and
// answers by event type, so that every outcome of the relay shows up.
type runner struct {
	*relaytest.Runner
	key     []byte
	out     *console
	badSigs atomic.Int64
}

func startRunner(key []byte, out *console) (*runner, error) {
	rt, err := relaytest.StartRunner()
	if err != nil {
		return nil, err
	}
	rn := &runner{Runner: rt, key: key, out: out}
	rt.SetAnswer(rn.answer)
	return rn, nil
}

func (rn *runner) answer(w http.ResponseWriter, r *http.Request, body []byte) bool {
	received := time.Now()
	sigErr := verify(rn.key, r.Header, body, received)
	var ev struct {
		ID      string `json:"id"`
		Type    string `json:"type"`
		Attempt int    `json:"attempt"`
		Data    struct {
			Name string `json:"name"`
		} `json:"data"`
	}
	_ = json.Unmarshal(body, &ev) // a bad body shows as an empty type

	code := http.StatusOK
	sig := "ok"
	switch {
	case sigErr != nil:
		code = http.StatusUnauthorized
		sig = "BAD (" + sigErr.Error() + ")"
		rn.badSigs.Add(1)
	case ev.Type == "demo.rejected":
		code = http.StatusUnprocessableEntity // permanent: the relay marks it dead
	case ev.Type == "demo.flaky" && ev.Attempt <= 2:
		// Temporary, and this event's own failure: the relay backs off
		// and retries, counting each attempt. (A 503 would say the runner
		// as a whole is down: after two in a row the breaker stops
		// counting, and this lone row would stay at attempt 2.)
		code = http.StatusInternalServerError
	}
	rn.out.printf("runner | %s %-15s id=%.8s… attempt=%d signature=%s name=%q → %d %s",
		received.Format("15:04:05.000"), ev.Type, ev.ID, ev.Attempt, sig, ev.Data.Name, code, http.StatusText(code))
	w.WriteHeader(code)
	return code == http.StatusOK
}

// stats returns when each event first arrived (its first attempt: the
// relay numbers attempts from 1) and the request counts.
func (rn *runner) stats() (first map[string]time.Time, requests, badSigs int) {
	return rn.FirstReceipts(), rn.Counts().Requests, int(rn.badSigs.Load())
}

// signatureTolerance is how far webhook-timestamp may be from the runner's
// clock; it keeps a captured request from being replayed later.
const signatureTolerance = 5 * time.Minute

// verify checks a Standard Webhooks signature: base64 of HMAC-SHA256 over
// "<webhook-id>.<webhook-timestamp>.<body>", in a space-separated list of
// "v1,<signature>" entries. Runners in other languages can use the
// standardwebhooks library instead; this is all it does.
func verify(key []byte, h http.Header, body []byte, now time.Time) error {
	id, ts, sigs := h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature")
	if id == "" || ts == "" || sigs == "" {
		return errors.New("missing webhook headers")
	}
	secs, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return errors.New("bad webhook-timestamp")
	}
	if d := now.Sub(time.Unix(secs, 0)); d > signatureTolerance || d < -signatureTolerance {
		return errors.New("timestamp outside tolerance")
	}
	m := hmac.New(sha256.New, key)
	fmt.Fprintf(m, "%s.%s.", id, ts)
	m.Write(body)
	want := m.Sum(nil)
	for _, s := range strings.Fields(sigs) {
		b64, ok := strings.CutPrefix(s, "v1,")
		if !ok {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(b64)
		if err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return errors.New("no matching signature")
}
