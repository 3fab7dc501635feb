package relaytest

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// KeyedRow is an outbox row as the order check sees it.
type KeyedRow struct {
	EventID string
	Key     string // "" for a row without a key: unordered
	Dead    bool   // skipped under RELAY_ORDERING_ON_DEAD=skip
}

// OrderViolations checks the order in which a runner first accepted
// events (Runner.FirstAcceptances) against the row order of each key:
// rows lists the table's rows in that order (id, or created_at then id).
// Within a key, the first acceptances must follow the rows' order. Dead
// rows are left out: under skip their successors go on, and a dead row's
// late acceptance (a timeout the runner answered after all) is no
// delivery. Rows never accepted are the lost-event check's business.
func OrderViolations(rows []KeyedRow, accepted []string) []string {
	type place struct {
		key string
		n   int
	}
	at := make(map[string]place, len(rows))
	count := map[string]int{}
	for _, r := range rows {
		if r.Key == "" || r.Dead {
			continue
		}
		at[r.EventID] = place{r.Key, count[r.Key]}
		count[r.Key]++
	}
	last := map[string]int{}
	var out []string
	for _, id := range accepted {
		p, ok := at[id]
		if !ok {
			continue
		}
		if prev, seen := last[p.key]; seen && p.n < prev {
			out = append(out, fmt.Sprintf("key %s: row %d (event %s) first accepted after row %d", p.key, p.n, id, prev))
			continue
		}
		last[p.key] = p.n
	}
	return out
}

// Querier is a connection or a pool.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// ReadKeyedRows reads the rows of an outbox table made by migrate, with
// its ordering key in keyColumn, in the key's row order (id) as
// OrderViolations wants them.
func ReadKeyedRows(ctx context.Context, q Querier, table, keyColumn string) ([]KeyedRow, error) {
	rows, err := q.Query(ctx, fmt.Sprintf(`SELECT event_id::text, coalesce(%s::text, ''), status = 'dead' FROM %s ORDER BY id`,
		pgx.Identifier{keyColumn}.Sanitize(), table))
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (KeyedRow, error) {
		var k KeyedRow
		return k, r.Scan(&k.EventID, &k.Key, &k.Dead)
	})
}
