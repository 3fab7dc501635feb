package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// orderedColumns map the ordering key to the column "entity".
func orderedColumns(extra ...string) Columns {
	c, err := ParseColumns(strings.Join(append([]string{"ordering_key=entity"}, extra...), ","))
	if err != nil {
		panic(err)
	}
	return c
}

// orderedTable makes an outbox table with an ordering key on pool's
// database, as migrate makes it, and a Store on it.
func orderedTable(t *testing.T, pool *pgxpool.Pool, name string, cols Columns, opts ...Option) *Store {
	t.Helper()
	ctx := context.Background()
	table := Table{Schema: "public", Name: name}
	if _, err := Migrate(ctx, pool, Planned(table, cols, DefaultStatuses()), ""); err != nil {
		t.Fatal(err)
	}
	schema, err := Inspect(ctx, pool, table, cols, DefaultStatuses())
	if err != nil {
		t.Fatal(err)
	}
	return New(pool, schema, opts...)
}

// keyed is a row of an ordered table: its key ("" for NULL) and how long
// ago it was created.
type keyed struct {
	key     string
	created time.Duration
}

// addKeyed inserts rows in the order given, each in its own transaction,
// and returns their ids.
func addKeyed(t *testing.T, st *Store, rows ...keyed) []string {
	t.Helper()
	out := make([]string, len(rows))
	for i, r := range rows {
		err := st.pool.QueryRow(context.Background(), st.schema.expand(`INSERT INTO {table} ({event_type}, {ordering_key}, {created_at})
			VALUES ('ordered', nullif($1, ''), now() - $2::float8 * interval '1 second') RETURNING {id}::text`),
			r.key, r.created.Seconds()).Scan(&out[i])
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// claimAll claims every due row by the sweep's claim, without grace.
func claimAll(t *testing.T, st *Store) []Row {
	t.Helper()
	c, err := st.ClaimDue(context.Background(), 100, 0, lease, 25, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c.Rows
}

func recordAll(t *testing.T, st *Store, rows []Row, status string) {
	t.Helper()
	var res []Result
	for _, r := range rows {
		res = append(res, Result{ID: r.ID, Attempt: r.Attempt, Status: status, Next: time.Now().Add(time.Hour), Error: "runner answered 503", Key: r.Key})
	}
	if refused, _, err := st.Record(context.Background(), res); err != nil || len(refused) > 0 {
		t.Fatalf("record: %v, refused %v", err, refused)
	}
}

func rowByID(rows []Row, id string) (Row, bool) {
	i := slices.IndexFunc(rows, func(r Row) bool { return r.ID == id })
	if i < 0 {
		return Row{}, false
	}
	return rows[i], true
}

// Only the head of each key is claimed, every key at once, rows without a
// key as today; the next row of a key comes once the head's outcome is
// written, and a retry holds back its own key and no other.
func TestOrderedClaimTakesHeadsOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := orderedTable(t, setup(t).pool, "ordered", orderedColumns())
	id := addKeyed(t, st, keyed{key: "a"}, keyed{key: "b"}, keyed{key: "a"}, keyed{}, keyed{key: "a"}, keyed{}, keyed{key: "b"})
	const a1, b1, a2, n1, a3, n2, b2 = 0, 1, 2, 3, 4, 5, 6

	got := claimAll(t, st)
	if !sameSet(ids(got), []string{id[a1], id[b1], id[n1], id[n2]}) {
		t.Fatalf("first claim = %v, want the heads of a and b and the rows without a key %v", ids(got), []string{id[a1], id[b1], id[n1], id[n2]})
	}
	if r, _ := rowByID(got, id[a1]); r.Key == nil || *r.Key != "a" {
		t.Errorf("claimed head of a has key %v", r.Key)
	}
	if r, _ := rowByID(got, id[n1]); r.Key != nil {
		t.Errorf("row without a key claimed with key %q", *r.Key)
	}
	// The successors are not heads while their heads are in flight, by
	// any claim.
	if more := claimAll(t, st); len(more) != 0 {
		t.Fatalf("claim with every head in flight = %v, want none", ids(more))
	}
	if c, err := st.ClaimIDs(ctx, []string{id[a2], id[b2]}, lease, 25); err != nil || len(c.Rows) != 0 {
		t.Fatalf("ClaimIDs of successors = %v, %v; want none", ids(c.Rows), err)
	}
	a, b := got[slices.IndexFunc(got, func(r Row) bool { return r.ID == id[a1] })], got[slices.IndexFunc(got, func(r Row) bool { return r.ID == id[b1] })]
	// a's head delivered, b's head to be retried in an hour.
	recordAll(t, st, []Row{a}, StatusDelivered)
	recordAll(t, st, []Row{b}, StatusPending)
	c, err := st.ClaimKeys(ctx, []string{"a", "b", "nobody"}, lease, 25, nil)
	if err != nil || !sameSet(ids(c.Rows), []string{id[a2]}) {
		t.Fatalf("ClaimKeys(a, b) = %v, %v; want a's second row %s only", ids(c.Rows), err, id[a2])
	}
	recordAll(t, st, c.Rows, StatusDelivered)
	if got := claimAll(t, st); !sameSet(ids(got), []string{id[a3]}) {
		t.Fatalf("claim after a2 = %v, want a3 %s (b waits for its retry)", ids(got), id[a3])
	}
	// b's retry falls due: its head goes first, then its successor.
	expire(t, st, id[b1])
	if got := claimAll(t, st); !sameSet(ids(got), []string{id[b1]}) {
		t.Fatalf("claim with b's retry due = %v, want the retry %s", ids(got), id[b1])
	}
}

// By id, a row stands for its key: the stream's later row brings the head
// it never handed over, and ids found but not claimed come back as seen;
// an id not there at all is neither.
func TestOrderedClaimByIDTakesTheKeysHead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := orderedTable(t, setup(t).pool, "by_id", orderedColumns())
	id := addKeyed(t, st, keyed{key: "a"}, keyed{key: "a"}, keyed{key: "a"}, keyed{})
	c, err := st.ClaimIDs(ctx, []string{id[1], id[2], id[3], "1099511627776"}, lease, 25)
	if err != nil || !sameSet(ids(c.Rows), []string{id[0], id[3]}) || !sameSet(c.Seen, id[1:3]) {
		t.Fatalf("ClaimIDs(a2, a3, n, absent) = claimed %v, seen %v, %v; want a's head %s and %s, seen a2 and a3",
			ids(c.Rows), c.Seen, err, id[0], id[3])
	}
	c, err = st.ClaimIDs(ctx, id[1:2], lease, 25)
	if err != nil || len(c.Rows) != 0 || !sameSet(c.Seen, id[1:2]) {
		t.Fatalf("ClaimIDs(a2) with a's head in flight = claimed %v, seen %v, %v; want none, seen a2", ids(c.Rows), c.Seen, err)
	}
}

// A dead head lets its key go on under skip and holds it under block until
// it is requeued and delivered or deleted.
func TestOrderedDeadHead(t *testing.T) {
	t.Parallel()
	pool := setup(t).pool
	ctx := context.Background()
	for _, policy := range []OnDead{OnDeadSkip, OnDeadBlock} {
		t.Run(string(policy), func(t *testing.T) {
			st := orderedTable(t, pool, "dead_"+string(policy), orderedColumns(), WithOrderingOnDead(policy))
			id := addKeyed(t, st, keyed{key: "k"}, keyed{key: "k"}, keyed{key: "other"})
			head := claimAll(t, st)
			h, _ := rowByID(head, id[0])
			recordAll(t, st, []Row{h}, StatusDead)
			got := claimAll(t, st)
			if policy == OnDeadSkip {
				if !sameSet(ids(got), []string{id[1]}) {
					t.Fatalf("claim after a dead head under skip = %v, want its successor %s", ids(got), id[1])
				}
				return
			}
			if len(got) != 0 {
				t.Fatalf("claim after a dead head under block = %v, want none", ids(got))
			}
			stats, err := st.Stats(ctx, false)
			if err != nil || stats.Ordering == nil {
				t.Fatalf("stats = %+v, %v", stats, err)
			}
			if stats.Ordering.BlockedKeys != 1 ||
				!slices.Equal(stats.Ordering.DeadKeys, []string{"k"}) || stats.Ordering.Oldest == nil || stats.Ordering.Oldest.ID != id[0] ||
				stats.Ordering.Oldest.LastError != "runner answered 503" || !stats.Ordering.Oldest.Dead {
				t.Fatalf("stats under block = %+v %+v, %v; want key k blocked by row %s", stats.Ordering, stats.Ordering.Oldest, err, id[0])
			}
			// Requeued, the dead row is the head again and goes first.
			if n, err := st.Requeue(ctx, RequeueFilter{IDs: id[:1]}, false); err != nil || n != 1 {
				t.Fatalf("requeue = %d, %v", n, err)
			}
			again := claimAll(t, st)
			if !sameSet(ids(again), id[:1]) {
				t.Fatalf("claim after the requeue = %v, want the requeued head %s", ids(again), id[0])
			}
			recordAll(t, st, again, StatusDead)
			if _, err := pool.Exec(ctx, `DELETE FROM `+st.Table().Ident()+` WHERE id = $1::bigint`, id[0]); err != nil {
				t.Fatal(err)
			}
			if got := claimAll(t, st); !sameSet(ids(got), id[1:2]) {
				t.Fatalf("claim after the dead head was deleted = %v, want %s", ids(got), id[1])
			}
		})
	}
}

// With a uuid primary key the key's order is the sequence column's: the
// order of insertion, though the rows share a transaction (and so
// created_at) and their uuids and created_at run the other way.
func TestOrderedBySequenceForUUIDs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := orderedTable(t, setup(t).pool, "by_uuid", orderedColumns("id=event_id", "sequence=seq"))
	if st.Schema().Columns[RoleID].Type != "uuid" {
		t.Fatalf("id is %s, want uuid", st.Schema().Columns[RoleID].Type)
	}
	tx, err := st.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var id []string
	for i, u := range []string{"ffffffff-0000-4000-8000-000000000000", "88888888-0000-4000-8000-000000000000", "00000000-0000-4000-8000-000000000000"} {
		var got string
		if err := tx.QueryRow(ctx, `INSERT INTO by_uuid (event_id, event_type, entity, created_at)
			VALUES ($1, 'ordered', 'k', now() - $2 * interval '1 second') RETURNING event_id::text`, u, i).Scan(&got); err != nil {
			t.Fatal(err)
		}
		id = append(id, got)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for want := range id {
		got := claimAll(t, st)
		if !sameSet(ids(got), id[want:want+1]) {
			t.Fatalf("claim = %v, want the first row inserted and not delivered %s", ids(got), id[want])
		}
		recordAll(t, st, got, StatusDelivered)
	}
}

// An ordering key on a table whose rows have no order of insertion is
// refused, in one line naming the column to add and its mapping; so is a
// sequence column that no sequence fills. An integer id, or a sequence
// column a sequence fills, is taken.
func TestOrderedRefusesATableWithoutAnOrder(t *testing.T) {
	t.Parallel()
	pool := setup(t).pool
	ctx := context.Background()
	mustExec(t, pool, `CREATE TABLE unordered_uuid (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), event_id uuid NOT NULL,
		event_type text NOT NULL, payload jsonb NOT NULL DEFAULT '{}', status text NOT NULL DEFAULT 'pending',
		attempts int NOT NULL DEFAULT 0, next_attempt_at timestamptz NOT NULL DEFAULT now(), last_error text,
		created_at timestamptz NOT NULL DEFAULT now(), delivered_at timestamptz, entity text,
		by_hand bigint NOT NULL, nullable bigint DEFAULT 1, identity bigint GENERATED ALWAYS AS IDENTITY, serial bigserial)`)
	table := Table{Schema: "public", Name: "unordered_uuid"}
	inspect := func(mapping string) error {
		_, err := Inspect(ctx, pool, table, orderedColumns(mapping), DefaultStatuses())
		return err
	}
	err := inspect("id=id")
	want := `outbox table public.unordered_uuid: ordered delivery needs an order the table cannot give: its id "id" is uuid, not a number from a sequence; ` +
		`add a column that a sequence fills (ALTER TABLE "public"."unordered_uuid" ADD COLUMN seq bigserial) and map it with sequence=seq in RELAY_COLUMNS`
	if !errors.Is(err, ErrCannotOrder) || err.Error() != want {
		t.Fatalf("uuid id without a sequence column: %v\nwant %s", err, want)
	}
	for col, problem := range map[string]string{
		"by_hand":  `column "by_hand" (role sequence) is not filled by a sequence`,
		"nullable": `column "nullable" (role sequence) is not filled by a sequence`,
		"entity":   `column "entity" (role sequence) is text, want int8 or int4`,
	} {
		if err := inspect("sequence=" + col); err == nil || !strings.Contains(err.Error(), problem) || errors.Is(err, ErrCannotOrder) {
			t.Errorf("sequence=%s: %v, want %q", col, err, problem)
		}
	}
	mustExec(t, pool, `CREATE SEQUENCE nullable_seq`)
	mustExec(t, pool, `ALTER TABLE unordered_uuid ALTER COLUMN nullable SET DEFAULT nextval('nullable_seq')`)
	if err := inspect("sequence=nullable"); err == nil || !strings.Contains(err.Error(), `column "nullable" (role sequence) allows NULL`) {
		t.Errorf("a nullable sequence column: %v", err)
	}
	for _, col := range []string{"identity", "serial"} {
		if err := inspect("sequence=" + col); err != nil {
			t.Errorf("sequence=%s: %v", col, err)
		}
	}
	if _, err := Inspect(ctx, pool, table, DefaultColumns(), DefaultStatuses()); err != nil {
		t.Errorf("the table without an ordering key: %v", err)
	}
}

// Claimers racing in separate transactions, by every claim, never hold two
// rows of one key at once, and each key's rows go in order, with retries
// keeping their place.
func TestOrderedConcurrentClaimers(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st := orderedTable(t, setup(t).pool, "racing", orderedColumns())
	const keys, perKey = 20, 15
	if _, err := st.pool.Exec(ctx, `INSERT INTO racing (event_type, entity)
		SELECT 'race', 'k' || (i % $1::int) FROM generate_series(0, $1::int * $2::int - 1) i ORDER BY i`, keys, perKey); err != nil {
		t.Fatal(err)
	}
	rows, err := st.pool.Query(ctx, `SELECT id::text, entity FROM racing ORDER BY racing.id`)
	if err != nil {
		t.Fatal(err)
	}
	order := map[string][]string{} // key → its ids in order
	for rows.Next() {
		var id, key string
		if err := rows.Scan(&id, &key); err != nil {
			t.Fatal(err)
		}
		order[key] = append(order[key], id)
	}
	var mu sync.Mutex
	inFlight := map[string]string{} // key → the row held
	done := map[string]int{}        // key → rows delivered
	var violations []string
	take := func(r Row) {
		mu.Lock()
		defer mu.Unlock()
		k := *r.Key
		if held, ok := inFlight[k]; ok {
			violations = append(violations, fmt.Sprintf("row %s of key %s claimed while %s is in flight", r.ID, k, held))
		}
		if next := order[k][done[k]]; r.ID != next {
			violations = append(violations, fmt.Sprintf("row %s of key %s claimed before %s", r.ID, k, next))
		}
		inFlight[k] = r.ID
	}
	// finish forgets the row before its outcome commits: a successor
	// claimed legitimately only sees it after the commit.
	finish := func(r Row, delivered bool) {
		mu.Lock()
		defer mu.Unlock()
		delete(inFlight, *r.Key)
		if delivered {
			done[*r.Key]++
		}
	}
	remaining := func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, d := range done {
			n += d
		}
		return n < keys*perKey
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(w), 1))
			for remaining() && ctx.Err() == nil {
				var c Claim
				var err error
				switch w % 3 {
				case 0:
					c, err = st.ClaimDue(ctx, 5, 0, lease, 1000, nil)
				case 1:
					c, err = st.ClaimKeys(ctx, []string{"k" + fmt.Sprint(rnd.IntN(keys)), "k" + fmt.Sprint(rnd.IntN(keys))}, lease, 1000, nil)
				default:
					var ids []string
					for range 5 {
						k := order["k"+fmt.Sprint(rnd.IntN(keys))]
						ids = append(ids, k[rnd.IntN(len(k))])
					}
					c, err = st.ClaimIDs(ctx, ids, lease, 1000)
				}
				if err != nil {
					t.Error(err)
					return
				}
				for _, r := range c.Rows {
					take(r)
				}
				for _, r := range c.Rows {
					// A third are retried at once: due again, still the head.
					delivered := rnd.IntN(3) > 0
					status := StatusPending
					if delivered {
						status = StatusDelivered
					}
					finish(r, delivered)
					if _, _, err := st.Record(ctx, []Result{{ID: r.ID, Attempt: r.Attempt, Status: status, Next: time.Now().Add(-time.Second), Error: "retry"}}); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if len(violations) > 0 {
		t.Fatalf("%d order violations, first: %s", len(violations), strings.Join(violations[:min(5, len(violations))], "; "))
	}
	if remaining() {
		t.Fatal("not every row was delivered")
	}
}

// The head test probes the order index, and the claim by key steps into
// it once per key, right after a burst as before.
func TestOrderedClaimUsesTheOrderIndex(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := orderedTable(t, setup(t).pool, "burst", orderedColumns())
	if _, err := st.pool.Exec(ctx, `INSERT INTO burst (event_type, entity) SELECT 'burst', 'k' || (i % 1000) FROM generate_series(1, 50000) i`); err != nil {
		t.Fatal(err)
	}
	choice := func(stmt string) string {
		sel := stmt[strings.Index(stmt, `SELECT "id"`):strings.LastIndex(stmt, ") due")]
		return strings.NewReplacer("$3", "100", "$4", "0", "$5", "'{}'").Replace(sel)
	}
	keys := strings.Replace(choice(st.claimKeys), "unnest(0::text[])", "unnest('{k1,k2}'::text[])", 1)
	for name, sel := range map[string]string{"due": choice(st.claimDue), "keys": keys} {
		p := explain(t, st.pool, sel)
		if !strings.Contains(p, "burst_order_idx") || !strings.Contains(p, "burst_order_leased_idx") || strings.Contains(p, "Seq Scan") {
			t.Errorf("the %s claim does not probe the order index:\n%s", name, p)
		}
	}
	c, err := st.ClaimDue(ctx, 100, 0, time.Minute, 25, nil)
	if err != nil || len(c.Rows) != 100 {
		t.Fatalf("ClaimDue = %d rows, %v", len(c.Rows), err)
	}
}

// Without the role, no statement mentions ordering at all.
func TestUnorderedStatementsUnchanged(t *testing.T) {
	t.Parallel()
	st := New(nil, DefaultSchema(Table{Schema: "public", Name: "t"}))
	for _, s := range []string{st.claimDue, st.claimIDs, st.dueIDs, st.nextDue} {
		if strings.Contains(s, "NOT EXISTS") || strings.Contains(s, "ordering") {
			t.Errorf("unordered statement has a head test:\n%s", s)
		}
	}
	if st.claimKeys != "" || len(DefaultSchema(Table{Schema: "public", Name: "t"}).tableSQL()) != 4 {
		t.Error("unordered store has a claim by key or migrate makes more indexes")
	}
}
