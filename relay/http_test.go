package relay

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// A connection that drops before any answer is retried in process with
// the same request, at most quickRetries times.
func TestQuickRetryResendsTheSameRequest(t *testing.T) {
	for _, tc := range []struct {
		drops, wantRequests int
		wantErr             bool
	}{
		{drops: 1, wantRequests: 2},
		{drops: 3, wantRequests: quickRetries + 1, wantErr: true},
	} {
		var mu sync.Mutex
		var got []string // body and idempotency key of each request
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			mu.Lock()
			got = append(got, r.Header.Get("Idempotency-Key")+" "+r.Header.Get("Content-Length")+" "+string(body))
			n := len(got)
			mu.Unlock()
			if n <= tc.drops {
				conn, _, err := http.NewResponseController(w).Hijack()
				if err == nil {
					conn.Close()
				}
				return
			}
			w.WriteHeader(http.StatusNoContent)
		}))
		cfg := Config{RunnerURL: srv.URL + "/events", HTTPTimeout: 5 * time.Second, Concurrency: 2, UserAgent: "outbox-relay"}
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		s := newSender(cfg, log, nopObserver{}, newBreaker(log, cfg.Concurrency, 0, cfg.Backoff, func() {}))

		a := s.post(context.Background(), benchRow())
		s.client.HTTPClient.CloseIdleConnections()
		srv.Close()
		if tc.wantErr {
			if a.err == nil || !strings.Contains(a.err.Error(), "unreachable") {
				t.Errorf("%d drops: answer %+v, want runner unreachable", tc.drops, a)
			}
		} else if a.err != nil || a.code != http.StatusNoContent {
			t.Errorf("%d drops: answer %+v, want 204", tc.drops, a)
		}
		if len(got) != tc.wantRequests {
			t.Fatalf("%d drops: runner got %d requests, want %d", tc.drops, len(got), tc.wantRequests)
		}
		for _, g := range got[1:] {
			if g != got[0] {
				t.Errorf("%d drops: a retry sent %q, the first %q", tc.drops, g, got[0])
			}
		}
	}
}
