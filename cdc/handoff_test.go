package cdc

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// The hand-off keeps the first rows whole, up to its budget of bytes, and
// a backlog behind them as ids, in order, and refuses more once full.
func TestHandOffKeepsABacklogAsIDs(t *testing.T) {
	in := func(ids ...string) *[]store.Insert {
		out := make([]store.Insert, len(ids))
		for i, id := range ids {
			out[i] = store.Insert{Row: store.Row{ID: id, Payload: []byte(`{}`)}, Sendable: true}
		}
		return &out
	}
	// Room for two rows whole, not three.
	h := newHandoff(3*size((*in("1"))[0])-1, 5)
	ctx := context.Background()
	if ok, err := h.put(ctx, in("1", "2", "3"), 0); !ok || err != nil {
		t.Fatalf("put = %v, %v", ok, err)
	}
	if ok, _ := h.put(ctx, in("4", "5"), 0); !ok {
		t.Fatal("put within the limit refused")
	}
	if ok, _ := h.put(ctx, in("6"), 0); ok {
		t.Fatal("put past the limit accepted")
	}
	// One row a take: whole rows and ids in turn, each in the order put.
	var got []string
	for b := h.take(1); b != nil; b = h.take(1) {
		for _, x := range b {
			kind := "id"
			if x.Sendable {
				kind = "whole"
			}
			got = append(got, x.Row.ID+" "+kind)
		}
	}
	if want := "3 id,1 whole,4 id,2 whole,5 id"; strings.Join(got, ",") != want {
		t.Errorf("took %v, want %s", got, want)
	}
}

// Ids the Deliverer reports missing are claimed again after each wait of
// missingRetries, then left to the sweeper.
func TestMissingIDsAreRetriedBriefly(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rec, _ := b.streaming(t)
	// The first claim misses every id, as when the commit is not yet
	// visible; the retry finds them.
	rec.mu.Lock()
	rec.missing = func(call int, _ string) bool { return call == 0 }
	rec.mu.Unlock()

	id := b.insert(t)
	pgtest.WaitFor(t, 2*time.Second, "the retried id", func() bool { return rec.has(id) })

	// An id never found is retried len(missingRetries) times, then left.
	rec.mu.Lock()
	rec.missing = func(int, string) bool { return true }
	before := len(rec.batches)
	rec.mu.Unlock()
	never := b.insert(t)
	want := before + 1 + len(missingRetries)
	pgtest.WaitFor(t, 2*time.Second, "every retry of a missing id", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.batches) >= want
	})
	// A later insert proves the stream went on; by then no further retry.
	rec.mu.Lock()
	rec.missing = nil
	rec.mu.Unlock()
	marker := b.insert(t)
	pgtest.WaitFor(t, 2*time.Second, "the marker", func() bool { return rec.has(marker) })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	n := 0
	for _, batch := range rec.batches {
		if slices.Contains(batch, never) {
			n++
		}
	}
	if n != 1+len(missingRetries) {
		t.Errorf("a never-found id was claimed %d times, want %d", n, 1+len(missingRetries))
	}
}
