package store

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
)

// The claim returns the trace context columns when their roles are mapped,
// as stored (a char(55) traceparent without its padding), NULL as empty;
// with them unmapped the claim is the statement it always was.
func TestClaimReturnsTraceContext(t *testing.T) {
	t.Parallel()
	pool, table := tracedTable(t, `ADD COLUMN tp char(55), ADD COLUMN ts varchar(512)`)
	ctx := context.Background()
	mustExec(t, pool, `INSERT INTO traced (id, event_type, tp, ts) VALUES
		(1, 'a', $1, 'congo=t61rcWkgMzE'), (2, 'b', NULL, NULL), (3, 'c', $1, NULL)`, tp)

	inspect := func(mapping string) *Store {
		cols, err := ParseColumns(mapping)
		if err != nil {
			t.Fatal(err)
		}
		s, err := Inspect(ctx, pool, table, cols, DefaultStatuses())
		if err != nil {
			t.Fatal(err)
		}
		return New(pool, s)
	}
	plain := New(pool, DefaultSchema(table))
	if strings.Contains(plain.claimDue, "tp") || plain.claimDue != inspect("").claimDue {
		t.Errorf("without the roles the claim changed:\n%s", plain.claimDue)
	}
	for _, tt := range []struct {
		mapping string
		want    map[string][2]string // by id: traceparent, tracestate
	}{
		{"traceparent=tp,tracestate=ts", map[string][2]string{"1": {tp, "congo=t61rcWkgMzE"}, "2": {}, "3": {tp, ""}}},
		{"traceparent=tp", map[string][2]string{"1": {tp, ""}, "2": {}, "3": {tp, ""}}},
		{"tracestate=ts", map[string][2]string{"1": {}, "2": {}, "3": {}}},
	} {
		st := inspect(tt.mapping)
		c, err := st.ClaimIDs(ctx, []string{"1", "2", "3"}, lease, 5)
		if err != nil || len(c.Rows) != 3 {
			t.Fatalf("%s: claim = %+v, %v", tt.mapping, c, err)
		}
		for _, r := range c.Rows {
			if got := [2]string{r.Traceparent, r.Tracestate}; got != tt.want[r.ID] {
				t.Errorf("%s: row %s has trace context %q, want %q", tt.mapping, r.ID, got, tt.want[r.ID])
			}
		}
		if _, err := st.Release(ctx, c.Rows); err != nil {
			t.Fatal(err)
		}
	}
}

// tp is a valid W3C traceparent.
const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// tracedTable makes the table traced on a database of its own, as migrate
// makes it, with the trace context columns that alter (an ALTER TABLE's
// actions) adds.
func tracedTable(t *testing.T, alter string) (*pgxpool.Pool, Table) {
	t.Helper()
	pool, table := openPool(t), Table{Schema: "public", Name: "traced"}
	if _, err := Migrate(context.Background(), pool, DefaultSchema(table), ""); err != nil {
		t.Fatal(err)
	}
	mustExec(t, pool, `ALTER TABLE traced `+alter)
	return pool, table
}
