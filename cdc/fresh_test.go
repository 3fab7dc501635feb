package cdc

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// With the outbox's schema, the stream hands each inserted row on whole,
// as the claim would read it, so that it can be sent without a claim.
func TestInsertsAreDecodedWhole(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.cfg.Outbox = store.DefaultSchema(table)
	rec := newRecorder()
	s, _ := b.start(t, rec)
	waitStreaming(t, s)

	ctx := context.Background()
	var id string
	if err := b.pool.QueryRow(ctx, `INSERT INTO portal_event_outbox (event_type, payload)
		VALUES ('file.finalized', '{"name": "Überweisung März.pdf", "n": [1, 2]}') RETURNING id::text`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, 5*time.Second, "the row", func() bool { return rec.has(id) })

	var want store.Row
	var due time.Time
	if err := b.pool.QueryRow(ctx, `SELECT event_id::text, event_type, payload::text, created_at, next_attempt_at
		FROM portal_event_outbox WHERE id = $1`, id).Scan(&want.EventID, &want.Type, &want.Payload, &want.CreatedAt, &due); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	got := rec.rows[id]
	rec.mu.Unlock()
	if !got.Sendable {
		t.Fatalf("row %s handed on by id only, want it whole", id)
	}
	r := got.Row
	if r.ID != id || r.EventID != want.EventID || r.Type != want.Type || string(r.Payload) != string(want.Payload) ||
		!r.CreatedAt.Equal(want.CreatedAt) || r.Attempt != 1 {
		t.Errorf("decoded %+v, payload %s\nwant    %+v, payload %s", r, r.Payload, want, want.Payload)
	}
	// Due is on this host's clock, which here is the server's, to the
	// round trip of the session's clock reading.
	if d := got.Due.Sub(due).Abs(); d > time.Second {
		t.Errorf("Due %s is %s off next_attempt_at %s", got.Due, d, due)
	}
}

// Rows committed before a session took the slot may have been announced,
// and be in flight unclaimed, in an earlier session: the new one leaves
// them to the sweeper (it signals Dropped) and hands on only later rows.
func TestReplayedRowsAreLeftToTheSweeper(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.cfg.Outbox = store.DefaultSchema(table)
	first := newRecorder()
	s, stop := b.start(t, first)
	waitStreaming(t, s)
	stop()

	before := []string{b.insert(t), b.insert(t)}
	rec := newRecorder()
	s, _ = b.start(t, rec)
	waitStreaming(t, s)
	after := b.insert(t)
	pgtest.WaitFor(t, 5*time.Second, "the row committed after the session began", func() bool { return rec.has(after) })
	// WAL comes in commit order: the earlier rows were read before it.
	if rec.has(before[0]) || rec.has(before[1]) {
		t.Errorf("rows committed before the session were handed on: %v", before)
	}
	select {
	case <-s.Dropped():
	default:
		t.Error("the sweeper was not told of the rows left to it")
	}
}

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
