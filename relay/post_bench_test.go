package relay

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// benchRow is a typical event: a uuid, a short type, a small payload.
func benchRow() *store.Row {
	return &store.Row{
		ID:        "123456",
		EventID:   "0196a1c2-7d3e-7c4b-9a51-3f2e8d6b1a90",
		Type:      "file.finalized",
		Payload:   json.RawMessage(`{"file": 42, "owner": "someone@example.com", "size": 1048576}`),
		CreatedAt: time.Date(2026, 5, 1, 12, 30, 45, 123456000, time.UTC),
		Attempt:   1,
	}
}

// benchSender is a sender with the breaker its quick retries consult.
func benchSender(b *testing.B, tweak func(*Config)) *sender {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	b.Cleanup(srv.Close)
	cfg := Config{RunnerURL: srv.URL + "/events", HTTPTimeout: 10 * time.Second, Concurrency: 16, UserAgent: "outbox-relay"}
	if tweak != nil {
		tweak(&cfg)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s := newSender(cfg, log, nopObserver{}, newBreaker(log, cfg.Concurrency, 0, cfg.Backoff, func() {}))
	b.Cleanup(s.client.HTTPClient.CloseIdleConnections)
	return s
}

// BenchmarkPost is one POST to a real HTTP server on loopback, as a worker
// sends it: the server's share is in the figures too.
func BenchmarkPost(b *testing.B) {
	for _, bc := range []struct {
		name  string
		tweak func(*Config)
	}{
		{"plain", nil},
		{"signed", func(c *Config) { c.SigningKey = []byte("0123456789abcdef0123456789abcdef"); c.Token = "tok" }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := benchSender(b, bc.tweak)
			r := benchRow()
			ctx := context.Background()
			b.ReportAllocs()
			cpu0 := cpuTime(b)
			for b.Loop() {
				if a := s.post(ctx, r); a.err != nil || a.code != http.StatusNoContent {
					b.Fatalf("answer %+v", a)
				}
			}
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime is the CPU the process has used, user and system: on a shared
// machine a steadier measure of the cost than the time per op, though it
// counts the server's share too.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRequest is building the request, the POST itself left out.
func BenchmarkRequest(b *testing.B) {
	for _, bc := range []struct {
		name  string
		tweak func(*Config)
	}{
		{"plain", nil},
		{"signed", func(c *Config) { c.SigningKey = []byte("0123456789abcdef0123456789abcdef"); c.Token = "tok" }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := Config{RunnerURL: "http://127.0.0.1:8080/events", UserAgent: "outbox-relay"}
			if bc.tweak != nil {
				bc.tweak(&cfg)
			}
			s := &sender{cfg: cfg}
			r := benchRow()
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := s.newRequest(ctx, r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkBody is the request body and its signature, without the POST.
func BenchmarkBody(b *testing.B) {
	r := benchRow()
	key := []byte("0123456789abcdef0123456789abcdef")
	b.ReportAllocs()
	for b.Loop() {
		body := appendBody(make([]byte, 0, 160+len(r.Type)+len(r.Payload)), r)
		_ = sign(key, r.EventID, 1777777777, body)
	}
}
