package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// runner is the demo's stand-in for the service that acts on events. It
// checks each request's Standard Webhooks signature, prints what it got and
// answers by event type, so that every outcome of the relay shows up.
type runner struct {
	key []byte
	out *console
	srv *http.Server
	url string

	mu        sync.Mutex
	firstSeen map[string]time.Time // event id → when attempt 1 arrived
	requests  int
	badSigs   int
}

func startRunner(key []byte, out *console) (*runner, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("runner: %w", err)
	}
	rn := &runner{key: key, out: out, url: "http://" + ln.Addr().String() + "/events", firstSeen: map[string]time.Time{}}
	rn.srv = &http.Server{Handler: rn, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = rn.srv.Serve(ln) }()
	return rn, nil
}

// stop lets requests under way finish, briefly; safe to call again.
func (rn *runner) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = rn.srv.Shutdown(ctx)
}

func (rn *runner) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	received := time.Now()
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "cannot read body", http.StatusBadRequest)
		return
	}
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
	switch {
	case sigErr != nil:
		code = http.StatusUnauthorized
	case ev.Type == "demo.rejected":
		code = http.StatusUnprocessableEntity // permanent: the relay marks it dead
	case ev.Type == "demo.flaky" && ev.Attempt <= 2:
		code = http.StatusServiceUnavailable // temporary: the relay backs off and retries
	}

	rn.mu.Lock()
	rn.requests++
	if sigErr != nil {
		rn.badSigs++
	}
	if _, seen := rn.firstSeen[ev.ID]; !seen && ev.Attempt == 1 {
		rn.firstSeen[ev.ID] = received
	}
	rn.mu.Unlock()

	sig := "ok"
	if sigErr != nil {
		sig = "BAD (" + sigErr.Error() + ")"
	}
	rn.out.printf("runner | %s %-15s id=%.8s… attempt=%d signature=%s name=%q → %d %s",
		received.Format("15:04:05.000"), ev.Type, ev.ID, ev.Attempt, sig, ev.Data.Name, code, http.StatusText(code))
	w.WriteHeader(code)
}

// stats returns the first-attempt arrival times and the request counts.
func (rn *runner) stats() (first map[string]time.Time, requests, badSigs int) {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	first = make(map[string]time.Time, len(rn.firstSeen))
	for k, v := range rn.firstSeen {
		first[k] = v
	}
	return first, rn.requests, rn.badSigs
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
