package cdc

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// claimer is a Deliverer that runs the real claim statement, so that the
// cost of one claim per hand-off is in the figures, and records when each
// id was claimed.
type claimer struct {
	st      *store.Store
	mu      sync.Mutex
	claimed map[int64]time.Time
	claims  int
}

func (c *claimer) DeliverIDs(ctx context.Context, ids []int64) ([]int64, error) {
	rows, _, err := c.st.ClaimIDs(ctx, ids, time.Minute, 25)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.claims++
	for _, r := range rows {
		c.claimed[r.ID] = now
	}
	var missing []int64
	for _, id := range ids {
		if _, ok := c.claimed[id]; !ok {
			missing = append(missing, id)
		}
	}
	return missing, nil
}

// BenchmarkHandOff compares handing ids off at each commit (flushIdle 0,
// the default) with waiting for a pause in the stream of 250 µs, 1 ms and
// 5 ms: the time from the start of an INSERT to its id being claimed by
// the real claim statement, and how many ids each claim carried, for
//
//   - steady: one writer, 500 single-row transactions a second;
//   - burst: 8 writers committing single-row transactions flat out.
//
// Run with: go test -run '^$' -bench HandOff -benchtime 1x ./cdc/
func BenchmarkHandOff(b *testing.B) {
	for _, load := range []string{"steady", "burst"} {
		for _, idle := range []time.Duration{0, 250 * time.Microsecond, time.Millisecond, 5 * time.Millisecond} {
			name := fmt.Sprintf("%s/pause=%s", load, idle)
			if idle == 0 {
				name = load + "/at-commit"
			}
			b.Run(name, func(b *testing.B) {
				bu := setup(b)
				c := &claimer{st: store.New(bu.pool, table), claimed: map[int64]time.Time{}}
				log := quietLogger()
				s := New(bu.cfg, c, log)
				s.idle = idle
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- s.Run(ctx) }()
				b.Cleanup(func() { cancel(); <-done })
				waitStreaming(b, s)

				var lat []time.Duration
				var claims, ids int
				for b.Loop() {
					c.mu.Lock()
					c.claimed, c.claims = map[int64]time.Time{}, 0
					c.mu.Unlock()
					starts := runLoad(b, bu, load)
					pgtest.WaitFor(b, 30*time.Second, "every id claimed", func() bool {
						c.mu.Lock()
						defer c.mu.Unlock()
						return len(c.claimed) >= len(starts)
					})
					c.mu.Lock()
					for id, start := range starts {
						lat = append(lat, c.claimed[id].Sub(start))
					}
					claims += c.claims
					ids += len(starts)
					c.mu.Unlock()
				}
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
				b.ReportMetric(float64(ids)/float64(claims), "ids/claim")
			})
		}
	}
}

// runLoad inserts rows as load says and returns when each INSERT started.
func runLoad(b *testing.B, bu *bundle, load string) map[int64]time.Time {
	ctx := context.Background()
	var mu sync.Mutex
	starts := map[int64]time.Time{}
	insert := func() {
		start := time.Now()
		var id int64
		if err := bu.pool.QueryRow(ctx, `INSERT INTO portal_event_outbox (event_type) VALUES ('bench') RETURNING id`).Scan(&id); err != nil {
			b.Error(err)
			return
		}
		mu.Lock()
		starts[id] = start
		mu.Unlock()
	}
	switch load {
	case "steady":
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for range 1000 {
			<-tick.C
			insert()
		}
	case "burst":
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for range 500 {
					insert()
				}
			})
		}
		wg.Wait()
	}
	return starts
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
