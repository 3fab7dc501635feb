package store

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// craftedTable makes an ordered table with mapping and statuses (as
// RELAY_COLUMNS and RELAY_STATUS_VALUES spell them) on pool's database, as
// migrate makes it, and a Store on it with dead rows blocking their key, so
// that every status value is in the head test.
func craftedTable(t *testing.T, pool *pgxpool.Pool, name, mapping, statuses string) *Store {
	t.Helper()
	cols, err := ParseColumns(mapping)
	if err != nil {
		t.Fatal(err)
	}
	st, err := ParseStatuses(statuses)
	if err != nil {
		t.Fatal(err)
	}
	table := Table{Schema: "public", Name: name}
	if _, err := Migrate(context.Background(), pool, Planned(table, cols, st), ""); err != nil {
		t.Fatal(err)
	}
	schema, err := Inspect(context.Background(), pool, table, cols, st)
	if err != nil {
		t.Fatal(err)
	}
	return New(pool, schema, WithOrderingOnDead(OnDeadBlock))
}

// A status value or a column name is data, whatever it spells: one that
// looks like a statement's placeholder ({dead}) and another that is SQL
// reach the server as a literal and an identifier, on an ordered table as
// on any. The SQL here would advance the sequence injected each time it
// ran, and make every keyed row look blocked.
func TestCraftedNamesAndValuesStayData(t *testing.T) {
	t.Parallel()
	const injection = `OR nextval($$injected$$) < 0 OR $$x$$=`
	for _, tc := range []struct{ name, mapping, statuses string }{
		{"status values", "ordering_key=entity", "pending={dead},delivered=SENT,dead=" + injection},
		{"column names", `ordering_key=entity,id=Id {dead},created_at={pending}"'\`, "dead=" + injection},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool := openPool(t)
			ctx := context.Background()
			mustExec(t, pool, `CREATE SEQUENCE injected`)
			st := craftedTable(t, pool, "crafted", tc.mapping, tc.statuses)
			id := addKeyed(t, st, keyed{key: "a"}, keyed{key: "a"})
			got := claimAll(t, st)
			if len(got) != 1 || got[0].ID != id[0] {
				t.Errorf("claim = %v, want the head of key a, %s", ids(got), id[0])
			}
			recordAll(t, st, got, StatusDead)
			if got := claimAll(t, st); len(got) != 0 {
				t.Errorf("claim behind a dead head under block = %v, want none", ids(got))
			}
			stats, err := st.Stats(ctx, true)
			if err != nil || stats.Pending != 1 || stats.Dead != 1 || stats.Ordering == nil || stats.Ordering.BlockedKeys != 1 {
				t.Errorf("Stats = %+v, %v; want one pending, one dead, key a blocked", stats, err)
			}
			exerciseStore(t, pool, craftedTable(t, pool, "crafted_plain", tc.mapping, tc.statuses))
			var ran bool
			if err := pool.QueryRow(ctx, `SELECT is_called FROM injected`).Scan(&ran); err != nil || ran {
				t.Errorf("the sequence was advanced (%v, %v): a configured value ran as SQL", ran, err)
			}
		})
	}
}

// With standard_conforming_strings off (a database's setting, which the
// relay's sessions inherit), a backslash in a plain literal escapes the
// character after it. Status values and error texts with backslashes and
// quotes are still stored and matched exactly, by every statement.
func TestQuotingWithoutStandardConformingStrings(t *testing.T) {
	t.Parallel()
	pool := openPool(t)
	ctx := context.Background()
	mustExec(t, pool, `ALTER DATABASE "`+pool.Config().ConnConfig.Database+`" SET standard_conforming_strings = off`)
	pool.Reset()
	var scs string
	if err := pool.QueryRow(ctx, `SHOW standard_conforming_strings`).Scan(&scs); err != nil || scs != "off" {
		t.Fatalf("standard_conforming_strings = %q, %v; want off", scs, err)
	}
	const statuses = `pending=new\,delivered=it's \'sent\',dead=dead\\'`
	exerciseStore(t, pool, craftedTable(t, pool, "slashed_plain", "ordering_key=entity", statuses))
	st := craftedTable(t, pool, "slashed", "ordering_key=entity", statuses)
	id := addKeyed(t, st, keyed{key: "k"}, keyed{key: "k"})
	got := claimAll(t, st)
	if len(got) != 1 || got[0].ID != id[0] {
		t.Fatalf("claim = %v, want the head of key k, %s", ids(got), id[0])
	}
	const why = `runner answered 503: C:\temp\'s "x"\`
	res := []Result{{ID: got[0].ID, Attempt: got[0].Attempt, Status: StatusPending, Next: time.Now().Add(time.Hour), Error: why, Key: got[0].Key}}
	if refused, _, err := st.Record(ctx, res); err != nil || refused != nil {
		t.Fatalf("Record = %v, %v", refused, err)
	}
	var status, lastErr string
	err := pool.QueryRow(ctx, `SELECT status, last_error FROM slashed WHERE id = $1::bigint`, got[0].ID).Scan(&status, &lastErr)
	if err != nil || status != `new\` || lastErr != why {
		t.Errorf("row %s: status %q last_error %q (%v); want %q and %q", got[0].ID, status, lastErr, err, `new\`, why)
	}
	stats, err := st.Stats(ctx, false)
	if err != nil || stats.Ordering == nil || stats.Ordering.BlockedKeys != 1 || stats.Ordering.Oldest.LastError != why {
		t.Errorf("Stats = %+v, %v; want key k waiting with its error", stats, err)
	}
}
