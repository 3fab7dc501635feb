package store

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// noneClaimable fails the test when any claim takes a row: by the sweep,
// by id (the stream) or by key (the successor's claim).
func noneClaimable(t *testing.T, st *Store, why string, byID, keys []string) {
	t.Helper()
	ctx := context.Background()
	if got := claimAll(t, st); len(got) != 0 {
		t.Fatalf("%s: the sweep's claim took %v", why, ids(got))
	}
	if c, err := st.ClaimIDs(ctx, byID, lease, 25); err != nil || len(c.Rows) != 0 {
		t.Fatalf("%s: the claim by id took %v, %v", why, ids(c.Rows), err)
	}
	if c, err := st.ClaimKeys(ctx, keys, lease, 25, nil); err != nil || len(c.Rows) != 0 {
		t.Fatalf("%s: the claim by key took %v, %v", why, ids(c.Rows), err)
	}
}

// openEarlyRow inserts a row of key k into st's table in a transaction it
// leaves open (its id comes first), and returns the transaction, committed
// or rolled back at the end of the test, and the row's id.
func openEarlyRow(t *testing.T, st *Store, event string) (pgx.Tx, string) {
	t.Helper()
	ctx := context.Background()
	tx, err := st.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(ctx) })
	var id string
	if err := tx.QueryRow(ctx, st.schema.expand(`INSERT INTO {table} ({event_type}, {ordering_key}) VALUES ($1, 'k') RETURNING {id}::text`), event).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return tx, id
}

// A row that becomes pending earlier in its key's order than a row in
// flight (its transaction took its id first and committed after the
// other's row was claimed) waits until the row in flight has its outcome:
// no claim takes a second row of the key meanwhile. Then it goes. A row
// waiting for its retry holds its key the same way until the retry is
// due; then the key's first row goes, and nothing is stuck.
func TestOrderedLateRowWaitsForTheLeasedRow(t *testing.T) {
	t.Parallel()
	pool := setup(t).pool
	for _, leased := range []string{"in flight", "waiting for its retry"} {
		t.Run(leased, func(t *testing.T) {
			ctx := context.Background()
			st := orderedTable(t, pool, "late_"+strings.Fields(leased)[0], orderedColumns())
			tx, early := openEarlyRow(t, st, "early")
			late := addKeyed(t, st, keyed{key: "k"})[0]
			claimed := claimAll(t, st)
			if !sameSet(ids(claimed), []string{late}) {
				t.Fatalf("claim = %v, want the committed row %s", ids(claimed), late)
			}
			if leased != "in flight" {
				recordAll(t, st, claimed, StatusPending) // its retry is an hour away
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			noneClaimable(t, st, "with "+late+" "+leased, []string{early}, []string{"k"})
			if leased == "in flight" {
				recordAll(t, st, claimed, StatusDelivered)
			} else {
				expire(t, st, late)
			}
			got := claimAll(t, st)
			if !sameSet(ids(got), []string{early}) {
				t.Fatalf("claim once %s is no longer %s = %v, want the key's first row %s", late, leased, ids(got), early)
			}
			if leased != "in flight" {
				recordAll(t, st, got, StatusDelivered)
				if got := claimAll(t, st); !sameSet(ids(got), []string{late}) {
					t.Fatalf("claim after %s = %v, want the retry %s", early, ids(got), late)
				}
			}
		})
	}
}

// A dead row requeued while a later row of its key is in flight waits for
// that row's outcome, then goes.
func TestOrderedRequeueWaitsForTheRowInFlight(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := orderedTable(t, setup(t).pool, "requeued", orderedColumns())
	id := addKeyed(t, st, keyed{key: "k"}, keyed{key: "k"})
	recordAll(t, st, claimAll(t, st), StatusDead)
	inFlight := claimAll(t, st)
	if !sameSet(ids(inFlight), id[1:]) {
		t.Fatalf("claim after a dead head under skip = %v, want %s", ids(inFlight), id[1])
	}
	if n, err := st.Requeue(ctx, RequeueFilter{IDs: id[:1]}, false); err != nil || n != 1 {
		t.Fatalf("requeue = %d, %v", n, err)
	}
	noneClaimable(t, st, "with "+id[1]+" in flight", id[:1], []string{"k"})
	recordAll(t, st, inFlight, StatusDelivered)
	if got := claimAll(t, st); !sameSet(ids(got), id[:1]) {
		t.Fatalf("claim after the row in flight was delivered = %v, want the requeued %s", ids(got), id[0])
	}
}

// Two claims that overlap in time never take two rows of one key: claim X
// has taken its snapshot and holds the key's row r (a trigger holds it
// there) when a row earlier in the key's order commits; claim Y, whose
// snapshot would see that row and not X's lease, waits for X to commit
// instead, and then sees r leased.
func TestOrderedClaimsTakeTurns(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st := orderedTable(t, setup(t).pool, "turns", orderedColumns())
	mustExec(t, st.pool, `CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
		IF NEW.event_type = 'held' THEN PERFORM pg_advisory_xact_lock_shared(4242); END IF; RETURN NEW; END $$`)
	mustExec(t, st.pool, `CREATE TRIGGER hold BEFORE UPDATE ON turns FOR EACH ROW EXECUTE FUNCTION hold()`)
	late, early := openEarlyRow(t, st, "early")
	var held string
	if err := st.pool.QueryRow(ctx, `INSERT INTO turns (event_type, entity) VALUES ('held', 'k') RETURNING id::text`).Scan(&held); err != nil {
		t.Fatal(err)
	}
	holder, err := st.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Release()
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_lock(4242)`); err != nil {
		t.Fatal(err)
	}
	waiting := func() int {
		var n int
		if err := st.pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`).Scan(&n); err != nil {
			t.Error(err)
		}
		return n
	}
	claims := make(chan Claim, 2)
	claim := func() {
		c, err := st.ClaimDue(ctx, 10, 0, lease, 25, nil)
		if err != nil {
			t.Error(err)
		}
		claims <- c
	}
	go claim() // X
	pgtest.WaitFor(t, 30*time.Second, "claim X to hold the row "+held, func() bool { return waiting() == 1 })
	if err := late.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	go claim() // Y
	var y *Claim
	pgtest.WaitFor(t, 30*time.Second, "claim Y to finish or wait", func() bool {
		select {
		case c := <-claims:
			y = &c
			return true
		default:
			return waiting() == 2
		}
	})
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_unlock(4242)`); err != nil {
		t.Fatal(err)
	}
	got := []string{}
	for range 2 {
		var c Claim
		if y != nil {
			c, y = *y, nil
		} else {
			c = <-claims
		}
		got = append(got, ids(c.Rows)...)
	}
	if !sameSet(got, []string{held}) {
		t.Fatalf("the two claims took %v, want only %s (X's): %s is earlier in the key's order but committed while %s was being claimed",
			got, held, early, held)
	}
}
