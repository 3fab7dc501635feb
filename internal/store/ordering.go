package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/handover"
)

// Delivery in order per key (the optional role ordering_key).
//
// Rows with the same non-NULL key are sent one at a time, in the key's row
// order: the primary key for an integer id, (created_at, id) otherwise.
// A row is claimable only when it is the head of its key: no earlier row
// of the key is pending (in flight, waiting for a retry or not yet tried)
// and, under OnDeadBlock, none is dead. The head test is part of the claim
// statement itself, so exclusivity comes from the table, across the stream,
// the sweep, replicas and restarts, as it does for rows without a key.
//
// Why two claimers can never hold two rows of one key: let r1 < r2 be rows
// of key k, r1 in flight (pending, leased; its outcome not yet committed).
// A claim decides which rows are heads on its statement's snapshot. In any
// snapshot that sees r2, r1 is visible too (the application committed r1
// before r2: the contract of docs/delivery.md) and pending, since r1 stays
// pending until its outcome commits. So r2 is not a head for anyone until
// r1's outcome is written. The head itself is taken by one claimer only:
// the claim locks it FOR UPDATE SKIP LOCKED, a racing claimer skips it,
// and one whose snapshot predates the other's committed claim re-checks
// the row's new version (READ COMMITTED's re-check of an updated row),
// finds it leased (not due) and leaves it. A re-check never adds a row the
// snapshot did not pick, so it cannot make r2 a head either. Once r1's
// outcome commits as delivered (or dead under OnDeadSkip), r2 becomes the
// head for every later snapshot. A retry keeps r1 pending, so its
// successors wait for it. The one way back to two in flight is requeueing
// a dead r1 while r2 is in flight: r1 is then sent again as the key's head.

// OnDead says what a dead row does to the later rows of its key.
type OnDead string

// The RELAY_ORDERING_ON_DEAD policies.
const (
	// OnDeadSkip lets the key's later rows go on past a dead row.
	OnDeadSkip OnDead = "skip"
	// OnDeadBlock holds them until the dead row is requeued or deleted.
	OnDeadBlock OnDead = "block"
)

// ParseOnDead reads a RELAY_ORDERING_ON_DEAD value; empty is skip.
func ParseOnDead(s string) (OnDead, error) {
	switch OnDead(s) {
	case "", OnDeadSkip:
		return OnDeadSkip, nil
	case OnDeadBlock:
		return OnDeadBlock, nil
	}
	return "", fmt.Errorf("must be skip or block, not %q", s)
}

// Option changes how New builds the statements.
type Option func(*Store)

// WithOrderingOnDead sets the policy for dead rows of ordered keys; it
// matters only when the ordering_key role is mapped.
func WithOrderingOnDead(p OnDead) Option { return func(s *Store) { s.onDead = p } }

// Ordered reports whether rows are delivered in order per key.
func (s *Store) Ordered() bool { return s.schema.Has(RoleOrderingKey) }

// OnDead is the policy for dead rows of ordered keys.
func (s *Store) OnDead() OnDead { return s.onDead }

// orderColumns are the columns of a key's row order.
func (s *Schema) orderColumns() []Role {
	if isInteger(s.Columns[RoleID].Type) {
		return []Role{RoleID}
	}
	return []Role{RoleCreatedAt, RoleID}
}

// order is the row order as a template of a SQL row of the columns of
// alias: a table alias, or {table} where the claim's row choice names the
// table bare.
func (s *Schema) order(alias string) string {
	var cols []string
	for _, r := range s.orderColumns() {
		cols = append(cols, alias+"."+placeholder(r))
	}
	return "(" + strings.Join(cols, ", ") + ")"
}

// isHead is the template of the claim's condition that the candidate row
// (the bare table of the row choice) has no earlier row of its key that is
// pending, or dead under block. Each NOT EXISTS is one probe of a partial
// index that migrate makes (orderIndexes).
func (s *Schema) isHead(onDead OnDead) string {
	earlier := func(status string) string {
		return fmt.Sprintf(`NOT EXISTS (SELECT 1 FROM {table} p WHERE p.{ordering_key} = {table}.{ordering_key}
			AND p.{status} = %s AND %s < %s)`, status, s.order("p"), s.order("{table}"))
	}
	cond := earlier("{pending}")
	if onDead == OnDeadBlock {
		cond += " AND " + earlier("{dead}")
	}
	return " AND ({ordering_key} IS NULL OR (" + cond + "))"
}

// orderIndexes are the indexes the head test probes: the key's rows in
// order, one index of the pending rows and one of the (few) dead rows.
func (s *Schema) orderIndexes() []string {
	var cols []string
	for _, r := range append([]Role{RoleOrderingKey}, s.orderColumns()...) {
		cols = append(cols, placeholder(r))
	}
	index := `CREATE INDEX IF NOT EXISTS {index} ON {table} (` + strings.Join(cols, ", ") + `) WHERE {status} = `
	return []string{
		s.expand(index+`{pending}`, "{index}", quoteIdent(s.Table.Name+"_order_idx")),
		s.expand(index+`{dead}`, "{index}", quoteIdent(s.Table.Name+"_order_dead_idx")),
	}
}

// headOf is the head of the key key (an SQL expression): the key's first
// pending row, one step into the order index however long its backlog is.
func (s *Schema) headOf(key string) string {
	return `(SELECT p.{id} FROM {table} p WHERE p.{ordering_key} = ` + key + ` AND p.{status} = {pending}
			ORDER BY ` + strings.Trim(s.order("p"), "()") + ` LIMIT 1)`
}

// orderedStatements builds the ordered forms of the claims and of the
// sweeper's next-due query, and the claim of the heads of given keys.
func (s *Store) orderedStatements(claim, due string) {
	x, head := s.schema.expand, s.schema.isHead(s.onDead)
	// The claim returns each row's key, for the claim of its successor.
	claim += ", o.{ordering_key}::text"
	s.claimDue = x(fmt.Sprintf(claim, due+head))
	s.dueIDs = x(`SELECT {id}::text FROM {table}
	WHERE {status} = {pending} AND {next_attempt_at} <= now() ` + strings.ReplaceAll(due, "$4", "$2") + head + `
		AND NOT {id} = ANY($3::text[]::{idtype}[])
	ORDER BY {next_attempt_at} LIMIT $1`)
	s.claimKeys = x(fmt.Sprintf(claim, `AND {id} IN (SELECT h.{id} FROM unnest($4::text[]) AS k(key)
		CROSS JOIN LATERAL `+s.schema.headOf("k.key::{keytype}")+` h)`+head))
	// By id (the stream), a row stands for its key: the claim takes the
	// key's head, whichever row that is. So a head that the stream left
	// to the sweeper (its hand-off was full) goes as soon as a later row
	// of its key comes by. The ids seen but not claimed come back too, on
	// the same snapshot: each is covered (its key's head is claimed, in
	// flight, or waiting for a retry), and only ids not seen at all are
	// worth claiming again.
	traceNames := []string{"", ", traceparent", ", traceparent, tracestate"}[s.traceCols]
	traceNulls := []string{"", ", NULL", ", NULL, NULL"}[s.traceCols]
	s.claimIDs = x(`WITH given AS (SELECT {id} AS id, {ordering_key} AS key FROM {table} WHERE {id} = ANY($4::text[]::{idtype}[])),
claimed (id, event_id, event_type, payload, created_at, attempt, buried` + traceNames + `, key) AS (` +
		fmt.Sprintf(claim, `AND ({id} IN (SELECT id FROM given WHERE key IS NULL)
		OR {id} IN (SELECT h.{id} FROM (SELECT DISTINCT key FROM given WHERE key IS NOT NULL) g CROSS JOIN LATERAL `+s.schema.headOf("g.key")+` h))`+head) + `)
SELECT *, false FROM claimed
UNION ALL
SELECT given.id::text, NULL, NULL, 'null', now(), 0, false` + traceNulls + `, NULL, true FROM given
	WHERE given.id::text NOT IN (SELECT id FROM claimed)`)
	// A row waiting behind its key's head is overdue but not claimable:
	// counting it would wake the sweeper every minWait for nothing.
	s.nextDue = x(`SELECT extract(epoch FROM least(
	(SELECT {next_attempt_at} FROM {table} WHERE {status} = {pending} AND {attempts} > 0` + head + ` ORDER BY {next_attempt_at} LIMIT 1),
	(SELECT {next_attempt_at} FROM {table} WHERE {status} = {pending} AND {attempts} = 0` + head + ` ORDER BY {next_attempt_at} LIMIT 1)
		+ ` + handover.GraceSQL("$1") + ` * interval '1 second') - now()::timestamptz)::float8`)
}

// ClaimKeys claims the heads of keys that are pending and due, none of
// skip, for lease: after a key's row was delivered or dead, its next row
// goes at once rather than at the next sweep. Rows never tried are taken
// at once too: the stream left them because they were not heads yet.
func (s *Store) ClaimKeys(ctx context.Context, keys []string, lease time.Duration, maxAttempts int, skip []string) (Claim, error) {
	if skip == nil {
		skip = []string{}
	}
	var c Claim
	err := s.claim(ctx, &c, s.claimKeys, lease, maxAttempts, len(keys), keys, skip)
	return c, err
}

// OrderingStats is what waits in order per key.
type OrderingStats struct {
	// BlockedKeys counts keys whose head is waiting for a retry (it has
	// failed and is not delivered yet), or is dead under OnDeadBlock.
	BlockedKeys int64 `json:"blocked_keys"`
	// Oldest is the longest-waiting of those heads; nil when none.
	Oldest *WaitingHead `json:"oldest,omitempty"`
	// DeadKeys are keys held by a dead row under OnDeadBlock, up to
	// maxDeadKeys of them, oldest first.
	DeadKeys []string `json:"dead_keys,omitempty"`
}

// WaitingHead is the head row of a key that waits.
type WaitingHead struct {
	Key       string        `json:"key"`
	ID        string        `json:"id"`
	Dead      bool          `json:"dead"`
	Age       time.Duration `json:"age_ns"` // since the row was created
	LastError string        `json:"last_error"`
}

// maxDeadKeys bounds the blocked keys status names.
const maxDeadKeys = 20

// orderingStats reads the keys that wait (orderingStatsSQL).
func (s *Store) orderingStats(ctx context.Context) (*OrderingStats, error) {
	var st OrderingStats
	var key, id, lastErr *string
	var dead *bool
	var age *float64
	err := s.pool.QueryRow(ctx, s.orderingStatsSQL(), maxDeadKeys).Scan(&st.BlockedKeys, &st.DeadKeys, &key, &id, &dead, &age, &lastErr)
	if err != nil {
		return nil, fmt.Errorf("ordering stats: %w", err)
	}
	if key != nil {
		st.Oldest = &WaitingHead{Key: *key, ID: *id, Dead: *dead, LastError: *lastErr,
			Age: time.Duration(max(*age, 0) * float64(time.Second))}
	}
	return &st, nil
}

// orderingStatsSQL reads the keys that wait. The heads waiting for a retry
// are found among the pending rows (the same scan as counting them); the
// dead ones, under block, among the dead rows.
func (s *Store) orderingStatsSQL() string {
	waiting := `SELECT {ordering_key}::text AS key, {id}::text AS id, false AS dead, {created_at}::timestamptz AS created, {last_error} AS err
	FROM {table} WHERE {status} = {pending} AND {ordering_key} IS NOT NULL AND {attempts} > 0
		AND coalesce({last_error}, '') <> ''` + s.schema.isHead(OnDeadSkip)
	if s.onDead == OnDeadBlock {
		waiting += `
	UNION ALL
	(SELECT DISTINCT ON ({ordering_key}) {ordering_key}::text, {id}::text, true, {created_at}::timestamptz, {last_error}
	FROM {table} WHERE {status} = {dead} AND {ordering_key} IS NOT NULL
	ORDER BY {ordering_key}, ` + strings.Trim(s.schema.order("{table}"), "()") + `)`
	}
	return s.schema.expand(`WITH w AS (` + waiting + `)
SELECT (SELECT count(DISTINCT key) FROM w),
	(SELECT array_agg(key ORDER BY created) FROM (SELECT key, min(created) AS created FROM w WHERE dead GROUP BY key ORDER BY 2 LIMIT $1) d),
	o.key, o.id, o.dead, extract(epoch FROM now() - o.created)::float8, coalesce(o.err, '')
FROM (SELECT 1) one LEFT JOIN LATERAL (SELECT * FROM w ORDER BY created LIMIT 1) o ON true`)
}

// scanKey adds where a claim's ordered row puts its key, and for the
// ordered claim by id whether the row was only seen.
func (s *Store) scanKey(cr *claimedRow, dest []any, sql string) []any {
	switch {
	case !s.Ordered():
		return dest
	case sql == s.claimIDs:
		return append(dest, &cr.key, &cr.seen)
	}
	return append(dest, &cr.key)
}
