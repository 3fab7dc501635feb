package retention_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/internal/retention"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestDeletesOnlyOldDeliveredRowsInBoundedBatches(t *testing.T) {
	ctx := context.Background()
	st := relaytest.NewStore(t)
	pool := st.Pool()
	// 30 old delivered rows, and rows that must stay: recently delivered,
	// old pending, old dead.
	if _, err := pool.Exec(ctx, `
		INSERT INTO portal_event_outbox (event_type, status, delivered_at, created_at)
		SELECT 'old', 'delivered', now() - interval '2 days', now() - interval '2 days' FROM generate_series(1, 30);
		INSERT INTO portal_event_outbox (event_type, status, delivered_at) VALUES ('recent', 'delivered', now() - interval '1 minute');
		INSERT INTO portal_event_outbox (event_type, status, created_at) VALUES ('pending', 'pending', now() - interval '9 days');
		INSERT INTO portal_event_outbox (event_type, status, created_at) VALUES ('dead', 'dead', now() - interval '9 days')`); err != nil {
		t.Fatal(err)
	}
	var deleted int64
	p := retention.New(retention.Config{Keep: time.Hour, Interval: time.Hour, BatchSize: 10, MaxBatch: 2,
		OnDelete: func(n int64) { deleted += n }}, st, slog.New(slog.DiscardHandler))
	for i, want := range []int64{20, 10, 0} {
		n, err := p.RunOnce(ctx)
		if err != nil || n != want {
			t.Fatalf("pass %d deleted %d, %v; want %d", i+1, n, err, want)
		}
	}
	if deleted != 30 {
		t.Errorf("OnDelete saw %d, want 30", deleted)
	}
	var left string
	if err := pool.QueryRow(ctx, `SELECT string_agg(event_type, ', ' ORDER BY event_type) FROM portal_event_outbox`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != "dead, pending, recent" {
		t.Errorf("rows left: %s, want dead, pending, recent", left)
	}
}

func TestKeepZeroKeepsForever(t *testing.T) {
	p := retention.New(retention.Config{Keep: 0}, nil, slog.New(slog.DiscardHandler))
	if err := p.Run(context.Background()); err != nil {
		t.Errorf("Run with Keep 0: %v", err)
	}
}
