package store

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Right after a burst, before autovacuum has analyzed the table, the
// sweep's claim must still walk the partial index in due order rather than
// fetch and sort every pending row.
func TestClaimWalksTheDueIndexAfterABurst(t *testing.T) {
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(pgtest.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	Configure(cfg)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	table := Table{Schema: "public", Name: "portal_event_outbox"}
	if _, err := Migrate(ctx, pool, DefaultSchema(table), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO portal_event_outbox (event_type) SELECT 'burst' FROM generate_series(1, 50000)`); err != nil {
		t.Fatal(err)
	}
	st := New(pool, DefaultSchema(table))
	// The claim's row choice, as the statement has it.
	sel := st.claimDue[strings.Index(st.claimDue, `SELECT "id"`):strings.Index(st.claimDue, ") due")]
	sel = strings.NewReplacer("$3", "100", "$4", "0", "$5", "'{}'").Replace(sel) // limit, grace
	rows, err := pool.Query(ctx, "EXPLAIN "+sel)
	if err != nil {
		t.Fatal(err)
	}
	var plan []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, line)
	}
	p := strings.Join(plan, "\n")
	if !strings.Contains(p, "Index Scan using portal_event_outbox_due_idx") || strings.Contains(p, "Sort") {
		t.Errorf("the claim does not walk the due index in order:\n%s", p)
	}
	claimed, err := st.ClaimDue(ctx, 100, 0, time.Minute, 25, nil)
	if err != nil || len(claimed.Rows) != 100 {
		t.Fatalf("ClaimDue = %d rows, %v", len(claimed.Rows), err)
	}
}
