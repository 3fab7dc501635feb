package cdc

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/store"
	"github.com/outbox-relay/outbox-relay/relay"
)

// TestEndToEnd runs the stream with the real Deliverer and a real runner,
// and no sweeper: a row reaches the runner only through the stream.
func TestEndToEnd(t *testing.T) {
	t.Parallel()
	b := setup(t)

	var mu sync.Mutex
	got := map[string]time.Time{} // event id → arrival
	runner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var ev struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(body, &ev)
		mu.Lock()
		got[ev.ID] = time.Now()
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(runner.Close)

	d := relay.New(relay.Config{
		RunnerURL:     runner.URL,
		HTTPTimeout:   5 * time.Second,
		Concurrency:   4,
		MaxAttempts:   5,
		Backoff:       relay.Backoff{Base: time.Second, Max: time.Minute},
		ShutdownGrace: time.Second,
	}, store.New(b.pool, store.DefaultSchema(table)), slog.New(slog.DiscardHandler), nil)
	dctx, stopD := context.WithCancel(context.Background())
	dDone := make(chan error, 1)
	go func() { dDone <- d.Run(dctx) }()
	// Registered first, so it runs after the stream has stopped: the
	// Deliverer outlives its claimers, as in cmd.
	t.Cleanup(func() {
		stopD()
		if err := <-dDone; err != nil {
			t.Errorf("Deliverer.Run: %v", err)
		}
	})

	s, _ := b.start(t, d)
	waitStreaming(t, s)

	ctx := context.Background()
	for range 5 {
		var eventID string
		start := time.Now()
		if err := b.pool.QueryRow(ctx, `INSERT INTO portal_event_outbox (event_type, payload)
			VALUES ('file.finalized', '{"n": 1}') RETURNING event_id::text`).Scan(&eventID); err != nil {
			t.Fatal(err)
		}
		pgtest.WaitFor(t, 5*time.Second, "the runner to get "+eventID, func() bool {
			mu.Lock()
			defer mu.Unlock()
			_, ok := got[eventID]
			return ok
		})
		mu.Lock()
		took := got[eventID].Sub(start)
		mu.Unlock()
		t.Logf("insert to runner: %s", took)
		if took > time.Second {
			t.Errorf("event %s took %s to reach the runner", eventID, took)
		}
		var status string
		pgtest.WaitFor(t, 5*time.Second, "the row to be marked delivered", func() bool {
			err := b.pool.QueryRow(ctx, `SELECT status FROM portal_event_outbox WHERE event_id = $1`, eventID).Scan(&status)
			return err == nil && status == store.StatusDelivered
		})
	}
}
