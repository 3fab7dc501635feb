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
	st := setup(t)
	pool := st.pool
	if _, err := pool.Exec(ctx, `INSERT INTO portal_event_outbox (event_type) SELECT 'burst' FROM generate_series(1, 50000)`); err != nil {
		t.Fatal(err)
	}
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
	st := setup(t)
	pool := st.pool
	if _, err := pool.Exec(ctx, `INSERT INTO portal_event_outbox (event_type) SELECT 'burst' FROM generate_series(1, 50000)`); err != nil {
		t.Fatal(err)
	}
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
// cached plans were made with. The relay's sessions plan each statement
// for the table as it is, so an outcome write finds its rows by key
// however many rows are pending, instead of reading every pending row:
// 20 ms a write at 60,000 pending rows, which held a burst's goodput to a
// tenth of the stream's capacity.
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
