package relay

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"
)

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

// benchConfigs are the senders' settings the benchmarks compare: without
// and with a signature and a token.
var benchConfigs = []struct {
	name  string
	tweak func(*Config)
}{
	{"plain", nil},
	{"signed", func(c *Config) { c.SigningKey = []byte("0123456789abcdef0123456789abcdef"); c.Token = "tok" }},
}

// BenchmarkPost is one POST to a real HTTP server on loopback, as a worker
// sends it: the server's share is in the figures too.
func BenchmarkPost(b *testing.B) {
	for _, bc := range benchConfigs {
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
