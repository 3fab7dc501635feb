package relaytest

import (
	"context"
	"fmt"
	"maps"
	"sync"

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
// rows lists the table's rows in that order (id, or the sequence column).
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
	return ReadKeyedRowsBy(ctx, q, table, keyColumn, "id")
}

// ReadKeyedRowsBy is ReadKeyedRows for a table whose rows are ordered by
// orderColumn (the column mapped to the role sequence).
func ReadKeyedRowsBy(ctx context.Context, q Querier, table, keyColumn, orderColumn string) ([]KeyedRow, error) {
	rows, err := q.Query(ctx, fmt.Sprintf(`SELECT event_id::text, coalesce(%s::text, ''), status = 'dead' FROM %s ORDER BY %s`,
		pgx.Identifier{keyColumn}.Sanitize(), table, pgx.Identifier{orderColumn}.Sanitize()))
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (KeyedRow, error) {
		var k KeyedRow
		return k, r.Scan(&k.EventID, &k.Key, &k.Dead)
	})
}

// KeyLoad counts, per ordering key, the requests a runner is answering at
// once, and keeps each key's most: on an ordered outbox it must never pass
// one. The zero value is ready.
type KeyLoad struct {
	mu        sync.Mutex
	now, most map[string]int
}

// Enter notes that a request of key is being answered; the function it
// returns notes that it was.
func (l *KeyLoad) Enter(key string) (leave func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.now == nil {
		l.now, l.most = map[string]int{}, map[string]int{}
	}
	l.now[key]++
	l.most[key] = max(l.most[key], l.now[key])
	return func() {
		l.mu.Lock()
		l.now[key]--
		l.mu.Unlock()
	}
}

// Now is how many requests of key are being answered.
func (l *KeyLoad) Now(key string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.now[key]
}

// Overlapped are the keys that had more than one request answered at
// once, each with its most.
func (l *KeyLoad) Overlapped() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := maps.Clone(l.most)
	maps.DeleteFunc(out, func(_ string, n int) bool { return n <= 1 })
	return out
}
