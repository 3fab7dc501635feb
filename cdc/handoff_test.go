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

// Ids waiting count against the budget when a row is held: behind a
// backlog of ids, a transaction's rows are held whole only as far as the
// rest of the budget goes, so the hand-off never holds the budget's worth
// of rows and its ids on top. Ids put after a row was held (a large
// transaction's, flushed before its commit) leave it whole at the commit:
// it is in memory already.
func TestHandOffBudgetCountsWaitingIDs(t *testing.T) {
	row := func(id string) store.Insert {
		return store.Insert{Row: store.Row{ID: id, Payload: []byte(`{"pad":"` + strings.Repeat("x", 200) + `"}`)}, Sendable: true}
	}
	ctx := context.Background()
	put := func(h *handoff, list []store.Insert) {
		t.Helper()
		if ok, err := h.put(ctx, &list, 0); !ok || err != nil {
			t.Fatalf("put = %v, %v", ok, err)
		}
	}
	budget := 2 * size(row("w1")) // both rows, were it not for the ids

	h := newHandoff(budget, 100)
	put(h, byID([]string{"i1", "i2", "i3", "i4"}))
	r := &reader{h: h}
	w1, w2 := row("w1"), row("w2")
	if !r.hold(&w1) || r.hold(&w2) {
		t.Errorf("behind 4 ids, held w1 %v and w2 %v; want w1 held, w2 an id", w1.Sendable, w2.Sendable)
	}

	h = newHandoff(budget, 100)
	r = &reader{h: h}
	w1, w2 = row("w1"), row("w2")
	if !r.hold(&w1) || !r.hold(&w2) {
		t.Fatal("two rows within the budget were not held")
	}
	put(h, byID([]string{"i1", "i2", "i3", "i4"})) // the same transaction's, before its commit
	r.release()
	put(h, r.pending)
	if h.queued != 2 || len(h.more) != 4 {
		t.Errorf("at the commit %d held rows went whole and %d ids wait; want both rows whole beside the 4 ids", h.queued, len(h.more))
	}
}
