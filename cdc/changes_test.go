package cdc

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// A row that its own transaction updates or deletes after inserting it is
// never handed on from its first tuple: updated rows go by id (the claim
// reads them as committed), deleted ones not at all. Rows the transaction
// leaves alone still go whole.
func TestRowsChangedInTheirTransactionAreNotSentAsInserted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.cfg.Outbox = store.DefaultSchema(table)
	rec, _ := b.streaming(t)

	for _, n := range []int{3, 3 * heldScan} { // one by one, then by index
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			plain, updated, rescheduled, deleted := changedInTx(t, b, n)
			last := b.insert(t) // commits after the others: read after them
			// Whole rows and ids are taken in turn, so the last row may
			// arrive before ids of the transaction before it: wait for
			// every row that is to arrive, then look at what did.
			sent := slices.Concat(plain, updated, rescheduled, []string{last})
			pgtest.WaitFor(t, 10*time.Second, "every row not deleted", func() bool { return rec.has(sent...) })

			rec.mu.Lock()
			defer rec.mu.Unlock()
			for _, id := range plain {
				if in, ok := rec.rows[id]; !ok || !in.Sendable {
					t.Errorf("row %s, untouched after its insert, was not handed on whole (%+v)", id, in)
				}
			}
			for _, id := range append(updated, rescheduled...) {
				if in, ok := rec.rows[id]; !ok || in.Sendable {
					t.Errorf("row %s, changed after its insert, was not handed on to be claimed (%+v)", id, in)
				}
			}
			for _, id := range deleted {
				if in, ok := rec.rows[id]; ok {
					t.Errorf("row %s, deleted in its transaction, was handed on (%+v)", id, in)
				}
			}
		})
	}
}

// changedInTx commits one transaction of 4n inserts: n left alone, n with
// their payload updated, n moved an hour ahead, n deleted.
func changedInTx(t *testing.T, b *bundle, n int) (plain, updated, rescheduled, deleted []string) {
	t.Helper()
	ctx := context.Background()
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	insert := func() string {
		var id string
		if err := tx.QueryRow(ctx, `INSERT INTO portal_event_outbox (event_type, payload)
			VALUES ('t', '{"v": 1}') RETURNING id::text`).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	change := []struct {
		ids *[]string
		sql string
	}{
		{&plain, ""},
		{&updated, `UPDATE portal_event_outbox SET payload = '{"v": 2}' WHERE id = $1`},
		{&rescheduled, `UPDATE portal_event_outbox SET next_attempt_at = now() + interval '1 hour' WHERE id = $1`},
		{&deleted, `DELETE FROM portal_event_outbox WHERE id = $1`},
	}
	for i := range n {
		for _, c := range change {
			id := insert()
			*c.ids = append(*c.ids, id)
			if c.sql != "" && i%2 == 0 {
				// Half change at once, half after more inserts.
				if _, err := tx.Exec(ctx, c.sql, id); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for _, c := range change {
		for i, id := range *c.ids {
			if c.sql != "" && i%2 == 1 {
				if _, err := tx.Exec(ctx, c.sql, id); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return plain, updated, rescheduled, deleted
}

// The relay publishes a table's updates and deletes only where the table
// has a replica identity: without one, every UPDATE of the table would
// fail. There the stream hands every row on to be claimed.
func TestATableWithoutReplicaIdentityKeepsItsUpdates(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	if _, err := b.pool.Exec(ctx, `ALTER TABLE portal_event_outbox DROP CONSTRAINT portal_event_outbox_pkey;
		CREATE UNIQUE INDEX portal_event_outbox_id ON portal_event_outbox (id)`); err != nil {
		t.Fatal(err)
	}
	b.cfg.Outbox = store.DefaultSchema(table)
	rec, _ := b.streaming(t)

	id := b.insert(t)
	pgtest.WaitFor(t, 10*time.Second, "the row", func() bool { return rec.has(id) })
	rec.mu.Lock()
	in := rec.rows[id]
	rec.mu.Unlock()
	if in.Sendable {
		t.Errorf("row %s was handed on whole, though the stream cannot see its later changes", id)
	}
	if _, err := b.pool.Exec(ctx, `UPDATE portal_event_outbox SET attempts = 1 WHERE id = $1`, id); err != nil {
		t.Fatalf("the table's updates fail: %v", err)
	}
	var publish string
	if err := b.pool.QueryRow(ctx, `SELECT concat_ws(',', CASE WHEN pubinsert THEN 'insert' END,
		CASE WHEN pubupdate THEN 'update' END, CASE WHEN pubdelete THEN 'delete' END)
		FROM pg_publication WHERE pubname = $1`, b.cfg.Publication).Scan(&publish); err != nil {
		t.Fatal(err)
	}
	if publish != "insert" {
		t.Errorf("publication publishes %s, want insert only", publish)
	}
	if !strings.Contains(b.logs.String(), "no replica identity") {
		t.Errorf("nothing logged says why rows are claimed first:\n%s", b.logs)
	}
}

// Rows held for their commit and rows waiting whole in the hand-off share
// one budget: with the hand-off partly full, a transaction's rows are held
// whole only as far as the rest of the budget goes; the rows behind become
// ids to claim.
func TestHeldRowsShareTheHandOffBudget(t *testing.T) {
	t.Parallel()
	const budget = 10_000
	row := func(id string, payload int) store.Insert {
		return store.Insert{Sendable: true, Row: store.Row{ID: id, Payload: []byte(strings.Repeat("x", payload))}}
	}
	h := newHandoff(budget, handoffMax)
	waiting := row("1", 6_000)
	if ok, err := h.put(context.Background(), &[]store.Insert{waiting}, 0); !ok || err != nil {
		t.Fatalf("put = %v, %v", ok, err)
	}
	r := &reader{h: h}
	first, second := row("2", 3_000-insertBytes), row("3", 3_000)
	if !r.hold(&first) {
		t.Errorf("a row of %d bytes was not held with %d of the budget's %d bytes waiting", size(first), size(waiting), budget)
	}
	if r.hold(&second) || second.Sendable || second.Row.ID != "3" {
		t.Errorf("a row of %d bytes past the budget left by the hand-off's rows was held (whole: %v), want an id to claim", size(row("3", 3_000)), second.Sendable)
	}
	r.release()
	if ok, err := h.put(context.Background(), &r.pending, 0); !ok || err != nil {
		t.Fatalf("put at the commit = %v, %v", ok, err)
	}
	if h.len() != 2 || len(h.more) != 0 {
		t.Errorf("at the commit the held row did not join the hand-off whole: %d rows, %d of them ids", h.len(), len(h.more))
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

// A large transaction's rows are in memory once: at the commit the held
// list becomes the pending one and then the hand-off's own, without a
// copy.
func TestALargeTransactionsRowsAreNotCopiedAtItsCommit(t *testing.T) {
	t.Parallel()
	r := newReader(t, nil, 0)
	r.inTx = true
	r.pending = append(r.pending, store.Insert{Row: store.Row{ID: "claim-me"}})
	const n = 4 * keepWhole
	for i := range n {
		in := store.Insert{Sendable: true, Row: store.Row{ID: strconv.Itoa(i), Payload: []byte(`{}`)}}
		if !r.hold(&in) {
			t.Fatalf("row %d was not held", i)
		}
	}
	held := &r.held[0]
	if err := r.committed(context.Background(), &pglogrepl.CommitMessage{TransactionEndLSN: 100}); err != nil {
		t.Fatal(err)
	}
	r.h.mu.Lock()
	shared := len(r.h.queue) == 1 && &r.h.queue[0][0] == held
	r.h.mu.Unlock()
	if !shared {
		t.Errorf("the hand-off holds a copy of the transaction's %d held rows, want the list itself", n)
	}
	var got []string
	claims := 0
	for b := r.h.take(1000); b != nil; b = r.h.take(1000) {
		for _, in := range b {
			if in.Row.ID == "claim-me" {
				claims++
			} else {
				got = append(got, in.Row.ID)
			}
		}
	}
	if len(got) != n || got[0] != "0" || got[n-1] != strconv.Itoa(n-1) || claims != 1 {
		t.Errorf("handed off %d held rows, first %q, last %q, and the id to claim %d times, want the %d held rows in order and the id once", len(got), got[0], got[len(got)-1], claims, n)
	}
	if r.safe != 100 {
		t.Errorf("safe = %v after the commit, want 100", r.safe)
	}
}
