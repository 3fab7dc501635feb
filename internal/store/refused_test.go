package store

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// A trigger that raises on one row stops neither the claim nor the outcome
// write of the others: the refused row comes back with its SQLSTATE.
func TestRefusedRowsAreIsolated(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := withTable(t, openPool(t), "outbox")
	pool := st.pool
	mustExec(t, pool, `INSERT INTO outbox (event_type) SELECT 'e' || g FROM generate_series(1, 10) g`)
	mustExec(t, pool, `CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.event_type = 'e7' AND NEW.status = 'delivered' THEN RAISE EXCEPTION 'no delivery for e7'; END IF;
	IF NEW.event_type = 'e3' THEN RAISE EXCEPTION 'e3 is frozen' USING ERRCODE = '23514'; END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER refuse BEFORE UPDATE ON outbox FOR EACH ROW EXECUTE FUNCTION refuse()`)

	c, err := st.ClaimDue(ctx, 100, 0, time.Minute, 25, nil)
	if err != nil || len(c.Rows) != 9 || len(c.Refused) != 1 {
		t.Fatalf("ClaimDue = %d rows, refused %+v, %v; want 9 and e3", len(c.Rows), c.Refused, err)
	}
	if r := c.Refused[0]; r.SQLState != "23514" || r.Message != "e3 is frozen" {
		t.Errorf("refused %+v", r)
	}
	// Skipped, the refused row no longer sends the claim the long way.
	mustExec(t, pool, `UPDATE outbox SET next_attempt_at = now() - interval '1 second' WHERE event_type = 'e1'`)
	again, err := st.ClaimDue(ctx, 100, 0, time.Minute, 25, []string{c.Refused[0].ID})
	if err != nil || len(again.Rows) != 1 || again.Rows[0].Type != "e1" || len(again.Refused) != 0 {
		t.Fatalf("ClaimDue skipping e3 = %+v, %v", again, err)
	}

	var results []Result
	for _, r := range c.Rows {
		if r.Type != "e1" {
			results = append(results, Result{ID: r.ID, Attempt: r.Attempt, Status: StatusDelivered})
		}
	}
	refused, _, err := st.Record(ctx, results)
	if err != nil || len(refused) != 1 || refused[0].SQLState != "P0001" {
		t.Fatalf("Record refused %+v, %v; want e7 with P0001", refused, err)
	}
	var delivered int
	var e7 string
	if err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'delivered'),
		(SELECT id::text FROM outbox WHERE event_type = 'e7') FROM outbox`).Scan(&delivered, &e7); err != nil {
		t.Fatal(err)
	}
	if delivered != 7 || refused[0].ID != e7 {
		t.Errorf("%d delivered, refused id %s; want 7 and e7's id %s", delivered, refused[0].ID, e7)
	}
}

// A claim by id that fails in a later half, after an earlier half was
// claimed and a row refused, returns both with the error: the claimed rows
// are leased and counted, and the caller must send or release them.
func TestClaimErrorReturnsWhatWasDone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := withTable(t, openPool(t), "outbox")
	pool := st.pool
	// In id order: 'refused', two rows, then two rows and 'later'.
	mustExec(t, pool, `INSERT INTO outbox (event_type) VALUES ('refused'), ('ok'), ('ok'), ('ok'), ('ok'), ('later')`)
	mustExec(t, pool, `CREATE SEQUENCE updates;
CREATE FUNCTION count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM nextval('updates'); RETURN NULL; END $$;
CREATE TRIGGER count_update BEFORE UPDATE ON outbox FOR EACH STATEMENT EXECUTE FUNCTION count_update();
CREATE FUNCTION fail_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.event_type = 'refused' THEN RAISE EXCEPTION 'refused row' USING ERRCODE = '23514'; END IF;
	IF NEW.event_type = 'later' AND currval('updates') > 1 THEN
		RAISE EXCEPTION 'a passing failure' USING ERRCODE = '40001';
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER fail_claim BEFORE UPDATE ON outbox FOR EACH ROW EXECUTE FUNCTION fail_claim()`)
	rows, err := pool.Query(ctx, `SELECT id::text FROM outbox ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var given []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		given = append(given, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}

	c, err := st.ClaimIDs(ctx, given, time.Minute, 25)
	if err == nil || !strings.Contains(err.Error(), "40001") {
		t.Fatalf("ClaimIDs error = %v, want the later half's 40001", err)
	}
	if len(c.Refused) != 1 || c.Refused[0].ID != given[0] || c.Refused[0].SQLState != "23514" {
		t.Errorf("refused %+v, want row %s with 23514", c.Refused, given[0])
	}
	var leased []string
	if err := pool.QueryRow(ctx, `SELECT coalesce(array_agg(id::text ORDER BY id), '{}') FROM outbox WHERE attempts > 0`).Scan(&leased); err != nil {
		t.Fatal(err)
	}
	if got := ids(c.Rows); len(leased) == 0 || !sameSet(got, leased) {
		t.Errorf("claim returned rows %v; the table has %v leased", got, leased)
	}
}

// A statement the database refuses whatever its rows (a privilege revoked
// from the relay's role, a statement trigger) comes back as that, after
// the batch and one write of no rows: it is not halved down to every row.
func TestStatementRefusedIsNotHalved(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	admin, role := pgtest.NewDBWithRole(t)
	if _, err := Migrate(ctx, admin, DefaultSchema(outbox), ""); err != nil {
		t.Fatal(err)
	}
	mustExec(t, admin, `INSERT INTO outbox (event_type) SELECT 'e' || g FROM generate_series(1, 16) g`)
	mustExec(t, admin, `GRANT SELECT, UPDATE ON outbox TO `+role.Ident)
	pool, sent := role.Pool(t, Configure)
	st := New(pool, DefaultSchema(outbox))
	c, err := st.ClaimDue(ctx, 16, 0, time.Minute, 25, nil)
	if err != nil || len(c.Rows) != 16 {
		t.Fatalf("ClaimDue before the refusal = %d rows, %v", len(c.Rows), err)
	}
	results := make([]Result, len(c.Rows))
	for i, r := range c.Rows {
		results[i] = Result{ID: r.ID, Attempt: r.Attempt, Status: StatusDelivered}
	}
	ids := make([]string, len(c.Rows))
	for i, r := range c.Rows {
		ids[i] = r.ID
	}

	for _, refuse := range []struct{ name, sql, sqlstate string }{
		{"privilege revoked", `REVOKE UPDATE ON outbox FROM ` + role.Ident, "42501"},
		{"statement trigger", `GRANT UPDATE ON outbox TO ` + role.Ident + `;
CREATE FUNCTION refuse_all() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'frozen' USING ERRCODE = '23514'; END $$;
CREATE TRIGGER refuse_all BEFORE UPDATE ON outbox FOR EACH STATEMENT EXECUTE FUNCTION refuse_all()`, "23514"},
	} {
		mustExec(t, admin, refuse.sql)
		for _, w := range []struct {
			statement string
			write     func() error
		}{
			{"claim", func() error { _, err := st.ClaimIDs(ctx, ids, time.Minute, 25); return err }},
			{"record", func() error { _, _, err := st.Record(ctx, results); return err }},
			{"release", func() error { _, err := st.Release(ctx, c.Rows); return err }},
		} {
			before := sent.Count()
			err := w.write()
			var whole *StatementRefused
			if !errors.As(err, &whole) || whole.SQLState != refuse.sqlstate {
				t.Errorf("%s, %s: error %v, want the statement refused with %s", refuse.name, w.statement, err, refuse.sqlstate)
			}
			if n := sent.Count() - before; n != 2 {
				t.Errorf("%s, %s: %d statements for %d rows, want 2 (the batch, then no rows)", refuse.name, w.statement, n, len(ids))
			}
		}
	}
}
