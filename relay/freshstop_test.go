package relay_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/store"
	"github.com/outbox-relay/outbox-relay/relay"
)

// Fresh sends whose timer claimed their row while the relay stops give
// the lease back, attempt uncounted: the one in flight (cut at the end of
// the grace), the one queued, and the one waiting for room in the queue.
func TestStopGivesBackLeasesOfFreshSends(t *testing.T) {
	t.Parallel()
	b := &bundle{pool: newPool(t)}
	entered := make(chan struct{}, 1)
	rn := newRunner(t, func(w http.ResponseWriter, r *http.Request, _ []byte) {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-r.Context().Done()
	})
	// One worker and a queue of one; the timers claim a fresh row 2 s
	// after it is due.
	d := relay.New(relay.Config{
		RunnerURL: rn.URL, HTTPTimeout: time.Minute, Concurrency: 1, MaxAttempts: 25,
		Backoff: relay.Backoff{Base: time.Hour, Max: time.Hour}, ShutdownGrace: 100 * time.Millisecond,
		FreshGrace: 4 * time.Second,
	}, store.New(b.pool, store.DefaultSchema(table)), slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()

	send := func(id string) error {
		_, err := d.DeliverInserts(context.Background(), []store.Insert{fresh(t, b, id)})
		return err
	}
	inFlight := insert(t, b.pool, "t", `{}`)
	if err := send(inFlight); err != nil {
		t.Fatal(err)
	}
	<-entered
	queued := insert(t, b.pool, "t", `{}`)
	if err := send(queued); err != nil {
		t.Fatal(err)
	}
	waiting := insert(t, b.pool, "t", `{}`)
	blocked := make(chan error, 1)
	go func() { blocked <- send(waiting) }()
	ids := []string{inFlight, queued, waiting}
	pgtest.WaitFor(t, 20*time.Second, "the timers to claim every row", func() bool {
		for _, id := range ids {
			if state(t, b.pool, id).Attempts != 1 {
				return false
			}
		}
		return true
	})

	cancel()
	if err := <-blocked; err == nil {
		t.Error("the send waiting for room in the queue was queued after the stop")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for name, id := range map[string]string{"in flight": inFlight, "queued": queued, "waiting for the queue": waiting} {
		if s := state(t, b.pool, id); s.Status != store.StatusPending || s.Attempts != 0 || s.Next.After(time.Now()) {
			t.Errorf("row %s after the stop: %+v, want pending, due, attempts 0", name, s)
		}
	}
}
