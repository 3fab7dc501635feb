package store

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// setup gives a test a fresh database with the outbox table, configured as
// the relay configures its pool, and a Store on it.
func setup(t *testing.T) *Store {
	t.Helper()
	return withTable(t, openPool(t), "portal_event_outbox")
}

// withTable makes another outbox table on the same database, so that the
// subtests of a table test each start from their own rows without paying
// for a database each.
func withTable(t *testing.T, pool *pgxpool.Pool, name string) *Store {
	t.Helper()
	table := Table{Schema: "public", Name: name}
	if _, err := Migrate(context.Background(), pool, DefaultSchema(table), ""); err != nil {
		t.Fatal(err)
	}
	return New(pool, DefaultSchema(table))
}

// openPool is a pool on a fresh database, set up as the relay's sessions.
func openPool(t *testing.T) *pgxpool.Pool { return openSessions(t, 0) }

// openSessions is openPool with at most n sessions (0: pgxpool's default).
func openSessions(t *testing.T, n int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(pgtest.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	Configure(cfg)
	if n > 0 {
		cfg.MaxConns = n
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func mustExec(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// insertTypes inserts, in one statement, a row of each event type with
// the payload {"n": i}, i counting from 1.
func insertTypes(t *testing.T, pool *pgxpool.Pool, s *Schema, types ...string) {
	t.Helper()
	values := make([]string, len(types))
	for i, typ := range types {
		values[i] = fmt.Sprintf(`('%s', '{"n": %d}')`, typ, i+1)
	}
	mustExec(t, pool, s.expand(`INSERT INTO {table} ({event_type}, {payload}) VALUES `+strings.Join(values, ", ")))
}

// seed is a row as a test needs it; times are offsets from the server's
// now(), so that they read the same whatever the two clocks say.
type seed struct {
	typ       string // default "test.event"
	status    string // default pending
	attempts  int
	next      time.Duration // next_attempt_at
	created   time.Duration // created_at
	delivered time.Duration // delivered_at, for a delivered row
	lastError string        // NULL when empty
}

// add inserts rows and returns their ids in order.
func add(t *testing.T, st *Store, rows ...seed) []string {
	t.Helper()
	ids := make([]string, len(rows))
	for i, r := range rows {
		if r.typ == "" {
			r.typ = "test.event"
		}
		if r.status == "" {
			r.status = StatusPending
		}
		err := st.pool.QueryRow(context.Background(), `INSERT INTO `+st.Table().Ident()+`
			(event_type, payload, status, attempts, next_attempt_at, created_at, delivered_at, last_error)
			VALUES ($1, '{"n": 1}', $2, $3, now() + $4::float8 * interval '1 second', now() + $5::float8 * interval '1 second',
				CASE WHEN $2 = 'delivered' THEN now() + $6::float8 * interval '1 second' END, nullif($7, ''))
			RETURNING id::text`,
			r.typ, r.status, r.attempts, r.next.Seconds(), r.created.Seconds(), r.delivered.Seconds(), r.lastError).Scan(&ids[i])
		if err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// state is what a test checks of a row after a statement ran.
type state struct {
	Status    string
	Attempts  int
	NextIn    time.Duration // next_attempt_at - now()
	LastError *string
	Delivered bool // delivered_at is set
}

func get(t *testing.T, st *Store, id string) state {
	t.Helper()
	var s state
	var next float64
	err := st.pool.QueryRow(context.Background(), `SELECT status, attempts,
		extract(epoch FROM next_attempt_at - now())::float8, last_error, delivered_at IS NOT NULL
		FROM `+st.Table().Ident()+` WHERE id = $1::bigint`, id).Scan(&s.Status, &s.Attempts, &next, &s.LastError, &s.Delivered)
	if err != nil {
		t.Fatalf("row %s: %v", id, err)
	}
	s.NextIn = time.Duration(next * float64(time.Second))
	return s
}

// expire ends the leases of rows as if their holder had died.
func expire(t *testing.T, st *Store, ids ...string) {
	t.Helper()
	if _, err := st.pool.Exec(context.Background(), `UPDATE `+st.Table().Ident()+
		` SET next_attempt_at = now() - interval '1 second' WHERE id = ANY($1::text[]::bigint[])`, ids); err != nil {
		t.Fatal(err)
	}
}

// near reports whether d is within a few seconds of want: statements and
// the test run at slightly different moments.
func near(d, want time.Duration) bool {
	diff := d - want
	return diff > -3*time.Second && diff < 3*time.Second
}

func ids(rows []Row) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r.ID
	}
	return out
}

func sameState(got, want state) bool {
	sameErr := (got.LastError == nil) == (want.LastError == nil) &&
		(got.LastError == nil || *got.LastError == *want.LastError)
	return got.Status == want.Status && got.Attempts == want.Attempts && got.Delivered == want.Delivered &&
		near(got.NextIn, want.NextIn) && sameErr
}

func show(s state) string {
	e := "NULL"
	if s.LastError != nil {
		e = fmt.Sprintf("%q", *s.LastError)
	}
	return fmt.Sprintf("%s, attempts %d, next in %s, last_error %s, delivered_at set %v",
		s.Status, s.Attempts, s.NextIn.Round(time.Second), e, s.Delivered)
}

// Right after a burst, before autovacuum has analyzed the table, the
// sweep's claim must still walk the partial index in due order rather than
// fetch and sort every pending row.
func TestClaimWalksTheDueIndexAfterABurst(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := burst(t)
	pool := st.pool
	// The claim's row choice, as the statement has it.
	sel := st.claimDue[strings.Index(st.claimDue, `SELECT "id"`):strings.Index(st.claimDue, ") due")]
	sel = strings.NewReplacer("$3", "100", "$4", "0", "$5", "'{}'").Replace(sel) // limit, grace
	p := explain(t, pool, sel)
	if !strings.Contains(p, "Index Scan using portal_event_outbox_due_idx") || strings.Contains(p, "Sort") {
		t.Errorf("the claim does not walk the due index in order:\n%s", p)
	}
	c, err := st.ClaimDue(ctx, 100, 0, time.Minute, 25, nil)
	claimed, _ := c.Rows, c.Dead
	if err != nil || len(claimed) != 100 {
		t.Fatalf("ClaimDue = %d rows, %v", len(claimed), err)
	}
}

// burst is setup with 50,000 pending rows just inserted, before
// autovacuum has analyzed the table.
func burst(t *testing.T) *Store {
	t.Helper()
	st := setup(t)
	mustExec(t, st.pool, `INSERT INTO portal_event_outbox (event_type) SELECT 'burst' FROM generate_series(1, 50000)`)
	return st
}

// explain is the plan of sel, one line per node.
func explain(t *testing.T, pool *pgxpool.Pool, sel string) string {
	t.Helper()
	rows, err := pool.Query(context.Background(), "EXPLAIN "+sel)
	if err != nil {
		t.Fatalf("%v in\n%s", err, sel)
	}
	plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(plan, "\n")
}

// The stream's claim by id is one primary-key lookup per id, whatever the
// statistics say: right after a burst, before ANALYZE, it must neither
// walk the due index nor scan the table.
func TestClaimByIDLooksUpEachIDAfterABurst(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := burst(t)
	pool := st.pool
	ids, err := pgx.CollectRows(mustQuery(t, pool, `SELECT id::text FROM portal_event_outbox ORDER BY id DESC LIMIT 100`), pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	sel := st.claimIDs[strings.Index(st.claimIDs, `SELECT r."id"`):strings.Index(st.claimIDs, ") due")]
	sel = strings.NewReplacer("$3", "100", "$4", "'{"+strings.Join(ids, ",")+"}'", "$5", "'{}'").Replace(sel)
	p := explain(t, pool, sel)
	if !strings.Contains(p, "Index Scan using portal_event_outbox_pkey") || strings.Contains(p, "due_idx") || strings.Contains(p, "Seq Scan on portal_event_outbox") {
		t.Errorf("the claim by id does not look each id up by the primary key:\n%s", p)
	}
	c, err := st.ClaimIDs(ctx, ids, time.Minute, 25)
	if err != nil || len(c.Rows) != 100 {
		t.Fatalf("ClaimIDs = %d rows, %v", len(c.Rows), err)
	}
}

func mustQuery(t *testing.T, pool *pgxpool.Pool, sql string) pgx.Rows {
	t.Helper()
	rows, err := pool.Query(context.Background(), sql)
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// The writes by id (outcomes, a fresh row's lease, leases given back, the
// stream's claim) are one primary-key lookup per id whatever the
// statistics say. Two tables the statistics mislead: a young one, never
// analyzed, whose pending rows look few; and one analyzed when nearly all
// of its rows were delivered, then given a burst, which is how a
// production table meets one. Given `status = 'pending'`, the planner took
// the due index for a few rows and read every pending one: an outcome
// write of 16 rows took 3.4 ms at 10,000 pending rows on the young table
// and 5.6 ms at 20,000 on the analyzed one, against 0.2–0.4 by the
// primary key; a 20,000-row burst into the analyzed table drained at
// about 400 events/s instead of 3,000. Both the custom plan and the
// generic one that the plan cache moves to after five runs are checked.
func TestWritesByIDLookUpEachIDAfterABurst(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, setup string
	}{
		{"young", `INSERT INTO portal_event_outbox (event_type) SELECT 'burst' FROM generate_series(1, 10000)`},
		{"analyzed when delivered", `INSERT INTO portal_event_outbox (event_type, status) SELECT 'old', 'delivered' FROM generate_series(1, 100000);
			ANALYZE portal_event_outbox;
			INSERT INTO portal_event_outbox (event_type) SELECT 'burst' FROM generate_series(1, 20000)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := setup(t)
			if _, err := st.pool.Exec(context.Background(), tc.setup); err != nil {
				t.Fatal(err)
			}
			ids, err := pgx.CollectRows(mustQuery(t, st.pool, `SELECT id::text FROM portal_event_outbox ORDER BY id DESC LIMIT 16`), pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			list, n := "'{"+strings.Join(ids, ",")+"}'", len(ids)
			fill := func(v string) string { return fmt.Sprintf("array_fill(%s, ARRAY[%d])", v, n) }
			for _, w := range []struct{ name, stmt, args string }{
				{"outcome", st.record, strings.Join([]string{list, fill("0"), fill("'delivered'::text"), fill("now()"), fill("''::text"), fill("false"), fill("false")}, ", ")},
				{"release", st.release, list + ", " + fill("1")},
				{"lease", st.lease, ids[0] + ", 0, 30"},
				{"claim by id", st.claimIDs, "30, 25, 16, " + list + ", '{}'"},
			} {
				for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
					p := explainPrepared(t, st, mode, w.stmt, w.args)
					if !strings.Contains(p, "Index Scan using portal_event_outbox_pkey") || strings.Contains(p, "due_idx") ||
						strings.Contains(p, "Seq Scan on portal_event_outbox") {
						t.Errorf("%s, %s: not one primary-key lookup per id:\n%s", w.name, mode, p)
					}
				}
			}
		})
	}
}

// explainPrepared is the plan of stmt run with args (SQL expressions) as a
// prepared statement under plan_cache_mode mode: PREPARE and EXECUTE, so
// that the plan cache decides as it does for the relay's own statements.
func explainPrepared(t *testing.T, st *Store, mode, stmt, args string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := st.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	// The simple protocol, as psql would send it: PREPARE's own $n are
	// not the client's parameters.
	res, err := conn.Conn().PgConn().Exec(ctx, "SET plan_cache_mode = "+mode+"; PREPARE w AS "+stmt+
		"; EXPLAIN EXECUTE w("+args+"); DEALLOCATE w; RESET plan_cache_mode").ReadAll()
	if err != nil {
		t.Fatalf("%v in\n%s", err, stmt)
	}
	var plan []string
	for _, r := range res {
		if r.CommandTag.String() == "EXPLAIN" {
			for _, row := range r.Rows {
				plan = append(plan, string(row[0]))
			}
		}
	}
	return strings.Join(plan, "\n")
}

// A burst into a new table outgrows the statistics that the session's
// cached plans were made with. The relay's sessions allow only plans by
// index, so the outcome write's plan cached on the small table finds its
// rows by key however many rows are pending, instead of reading every
// pending row: 20 ms a write at 60,000 pending rows, which held a burst's
// goodput to a tenth of the stream's capacity.
func TestOutcomeWritesStayByKeyAsTheTableGrows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := openSessions(t, 1) // one session: the one whose statement cache is read below
	st := withTable(t, pool, "portal_event_outbox")
	for range 8 { // past the five executions after which a cached plan may go generic
		row := claimOne(t, st, add(t, st, seed{})[0])
		if _, _, err := st.Record(ctx, []Result{{ID: row.ID, Attempt: row.Attempt, Status: StatusDelivered}}); err != nil {
			t.Fatal(err)
		}
	}
	mustExec(t, pool, `INSERT INTO portal_event_outbox (event_type, payload) SELECT 'test.event', '{}' FROM generate_series(1, 30000)`)

	var name string
	if err := pool.QueryRow(ctx, `SELECT name FROM pg_prepared_statements WHERE statement = $1`, st.record).Scan(&name); err != nil {
		t.Fatalf("the outcome write is not among the session's prepared statements: %v", err)
	}
	// The generic plan the session made on the small table, cached since.
	mustExec(t, pool, `SET plan_cache_mode = force_generic_plan`)
	rows, err := pool.Query(ctx, `EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE `+pgx.Identifier{name}.Sanitize()+
		`(ARRAY['0'], ARRAY[1], ARRAY['delivered'], ARRAY[now()], ARRAY[''], ARRAY[false], ARRAY[false])`)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	hit := 0
	for _, line := range plan {
		if _, after, ok := strings.Cut(line, "Buffers: shared hit="); ok && hit == 0 {
			fmt.Sscan(after, &hit)
		}
	}
	if hit == 0 || hit > 100 {
		t.Errorf("an outcome write of one row at 30,000 pending rows read %d buffers, want a handful by key; plan:\n%s",
			hit, strings.Join(plan, "\n"))
	}
}

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
	// waiting says whether a session of this test's database waits for
	// the advisory lock that lock picks out: pg_locks lists the whole
	// server's, where the parallel tests' claims wait for their own.
	waiting := func(lock string) bool {
		var n int
		if err := st.pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND `+lock).Scan(&n); err != nil {
			t.Error(err)
		}
		return n == 1
	}
	trigger, claimLock := "objsubid = 1 AND objid = 4242", "objsubid = 2" // one key, two keys
	claims := make(chan Claim, 2)
	claim := func() {
		c, err := st.ClaimDue(ctx, 10, 0, lease, 25, nil)
		if err != nil {
			t.Error(err)
		}
		claims <- c
	}
	go claim() // X
	pgtest.WaitFor(t, 30*time.Second, "claim X to hold the row "+held, func() bool { return waiting(trigger) })
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
			return waiting(trigger) && waiting(claimLock)
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
