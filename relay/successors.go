package relay

import (
	"context"
	"maps"
	"slices"
	"sync"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// PathNext labels rows claimed as the next row of their key, right after
// the outcome of the row before them was written.
const PathNext = "next"

// successors gathers the keys whose row was just delivered or dead, for
// the claim of each key's next row. With rows ordered per key, a row that
// arrives by the stream while its predecessor is in flight cannot be
// claimed, and the stream leaves it to the sweeper after a few ms; without
// this, the key's next row would wait for the sweep. Keys gather while a
// claim runs, so a burst of outcomes costs few claims.
type successors struct {
	mu    sync.Mutex
	keys  map[string]struct{}
	ready chan struct{} // signalled when keys were added
}

func newSuccessors() *successors {
	return &successors{keys: map[string]struct{}{}, ready: make(chan struct{}, 1)}
}

// add notes the keys of results the database has written: those that
// delivered a row or gave it up, as only they can make a successor the head.
func (s *successors) add(results []store.Result, skip func(id string) bool) {
	n := 0
	s.mu.Lock()
	for _, r := range results {
		if r.Key != nil && r.Status != store.StatusPending && !skip(r.ID) {
			s.keys[*r.Key] = struct{}{}
			n++
		}
	}
	s.mu.Unlock()
	if n > 0 {
		select {
		case s.ready <- struct{}{}:
		default: // a claim is already due
		}
	}
}

// take removes and returns up to n keys.
func (s *successors) take(n int) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := slices.Collect(maps.Keys(s.keys))
	keys = keys[:min(n, len(keys))]
	for _, k := range keys {
		delete(s.keys, k)
	}
	return keys
}

// claimSuccessors claims the next row of each key that add noted, until
// ctx is done. A failed claim is logged and left to the sweeper, which
// takes the row at its next pass.
func (c *claimer) claimSuccessors(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.next.ready:
		}
		for keys := c.next.take(recordBatch); len(keys) > 0 && ctx.Err() == nil; keys = c.next.take(recordBatch) {
			if err := c.keys(ctx, keys); err != nil && ctx.Err() == nil && err != errStopped {
				c.log.Warn("could not claim the next rows of keys; the sweeper delivers them", "keys", len(keys), "error", err)
			}
		}
	}
}
