package relay

import (
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

// invalidTrace is an Observer that counts dropped trace context headers.
type invalidTrace struct {
	nopObserver
	mu sync.Mutex
	n  map[string]int
}

func (o *invalidTrace) ObserveTraceContextInvalid(h string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.n[h]++
}

// senderFor is a sender to rn, with the breaker its quick retries consult.
func senderFor(t *testing.T, rn *relaytest.Runner, key []byte, obs Observer) *sender {
	t.Helper()
	cfg := Config{RunnerURL: rn.URL(), SigningKey: key, HTTPTimeout: 5 * time.Second, Concurrency: 1, UserAgent: "outbox-relay"}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s := newSender(cfg, log, obs, newBreaker(log, cfg.Concurrency, 0, cfg.Backoff, func() {}))
	t.Cleanup(s.client.HTTPClient.CloseIdleConnections)
	return s
}

// The sender alone, against relaytest's runner: the request it sends is
// signed as Standard Webhooks verify it, an invalid traceparent is
// dropped and counted, and the exchange carries the runner's answer and
// its Retry-After for the completer to decide on.
func TestSenderSendsSignedAndReturnsTheAnswer(t *testing.T) {
	rn, err := relaytest.StartRunner()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rn.Stop)
	var mu sync.Mutex
	var got *http.Request
	var body []byte
	rn.SetAnswer(func(w http.ResponseWriter, r *http.Request, b []byte) bool {
		mu.Lock()
		got, body = r.Clone(context.Background()), b
		mu.Unlock()
		w.Header().Set("Retry-After", "7")
		w.WriteHeader(http.StatusServiceUnavailable)
		return false
	})
	key := []byte("0123456789abcdef0123456789abcdef")
	obs := &invalidTrace{n: map[string]int{}}
	s := senderFor(t, rn, key, obs)

	j := job{row: *benchRow(), path: PathSweep, claimedAt: time.Now(), hold: claimed{}}
	j.row.Traceparent = "00-not-a-trace-context"
	x, cut := s.send(context.Background(), &j)
	if cut || x.ans.err != nil || x.ans.code != http.StatusServiceUnavailable || x.ans.retryAfter != 7*time.Second {
		t.Fatalf("send = %+v, cut %v; want 503 with Retry-After 7s", x.ans, cut)
	}
	if x.start.IsZero() || x.took <= 0 {
		t.Errorf("exchange timing: start %v, took %v", x.start, x.took)
	}
	mu.Lock()
	defer mu.Unlock()
	if got == nil {
		t.Fatal("the runner got no request")
	}
	wh, err := standardwebhooks.NewWebhook("whsec_" + base64.StdEncoding.EncodeToString(key))
	if err != nil {
		t.Fatal(err)
	}
	if err := wh.Verify(body, got.Header); err != nil {
		t.Errorf("signature: %v", err)
	}
	if tp := got.Header.Get("Traceparent"); tp != "" {
		t.Errorf("sent traceparent %q, want it dropped", tp)
	}
	if n := obs.n[HeaderTraceparent]; n != 1 {
		t.Errorf("dropped traceparents counted %d, want 1", n)
	}
}

// A POST cut by the end of the send's context (the shutdown grace) is
// reported cut: there is no answer to decide on.
func TestSenderReportsACutPost(t *testing.T) {
	rn, err := relaytest.StartRunner()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rn.Stop)
	arrived := make(chan struct{})
	var once sync.Once
	rn.SetAnswer(func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
		once.Do(func() { close(arrived) })
		<-r.Context().Done()
		return false
	})
	s := senderFor(t, rn, nil, nopObserver{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-arrived
		cancel()
	}()
	j := job{row: *benchRow(), path: PathSweep, claimedAt: time.Now(), hold: claimed{}}
	x, cut := s.send(ctx, &j)
	if !cut || x.ans.err == nil {
		t.Fatalf("send = %+v, cut %v; want cut with an error", x.ans, cut)
	}
}
