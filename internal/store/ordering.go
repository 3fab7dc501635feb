package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Delivery in order per key (the optional role ordering_key).
//
// A key's rows are ordered by a column that a sequence fills: the id when
// it is an integer (serial, bigserial, identity), else the column mapped
// to the role sequence. A sequence gives the application's insertion order
// within a transaction, and commit order across transactions that write
// the key one after the other (the contract of docs/delivery.md). A uuid or text
// id gives neither, nor does created_at (now() is the transaction's start,
// the same for every row of a transaction), so a table with nothing else
// is refused (ErrCannotOrder).
//
// Rows with the same non-NULL key are sent one at a time, in that order.
// A row is claimable only when it is the head of its key: no earlier row
// of the key is pending (in flight, waiting for a retry or not yet tried),
// none under OnDeadBlock is dead, and no other row of the key is leased
// (in flight or waiting for its retry: tried and not due). The head test
// is part of the claim statement itself, so exclusivity comes from the
// table, across the stream, the sweep, replicas and restarts, as it does
// for rows without a key.
//
// Why two rows of one key are never in flight at once: the claims of an
// ordered table take turns (claimLock), each on a snapshot taken once the
// claims before it committed. A row in flight is pending and leased from
// its claim's commit until its outcome's commit, so every later claim sees
// it leased and takes no other row of its key, whatever else that claim
// sees: a row earlier in the order that became visible late (a
// transaction that took its number first and committed last) or a dead
// row requeued. Those wait for the row in flight's outcome, and then go
// first. A row waiting for its retry holds its key the same way until its
// retry is due; then the key's first pending row goes. The head itself is
// taken by one claim only, as any row is: FOR UPDATE SKIP LOCKED.

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

// ErrCannotOrder is what a SchemaError matches when the ordering key is
// mapped but the table has no column that orders a key's rows.
var ErrCannotOrder = errors.New("the table cannot order the rows of a key")

// orderColumns are the columns of a key's row order: the sequence column
// when one is mapped, else the id.
func (s *Schema) orderColumns() []Role {
	if s.Has(RoleSequence) {
		return []Role{RoleSequence}
	}
	return []Role{RoleID}
}

// OrderColumn names the column that orders a key's rows.
func (s *Schema) OrderColumn() string { return s.Columns[s.orderColumns()[0]].Name }

// orderProblem says, on one line, what to add when the ordering key is
// mapped, no sequence column is, and the id is not an integer; "" when
// the rows are ordered, or not ordered at all.
func (s *Schema) orderProblem() string {
	id, ok := s.Columns[RoleID]
	if !s.Has(RoleOrderingKey) || !ok || isInteger(id.Type) {
		return ""
	}
	return fmt.Sprintf("ordered delivery needs an order the table cannot give: its id %s is %s, not a number from a sequence; "+
		"add a column that a sequence fills (ALTER TABLE %s ADD COLUMN seq bigserial) and map it with sequence=seq in RELAY_COLUMNS",
		quoteIdent(id.Name), id.Type, s.Table.Ident())
}

// checkSequence returns what is wrong with c as the sequence column: its
// values must come from a sequence, in the order rows are inserted.
func (s *Schema) checkSequence(c Column, alter string) string {
	switch {
	case !c.Sequenced:
		return fmt.Sprintf("column %s (role sequence) is not filled by a sequence (neither a nextval default nor an identity), so it does not give the order of insertion (map sequence to a column added with ALTER TABLE %s ADD COLUMN seq bigserial)",
			quoteIdent(c.Name), s.Table.Ident())
	case !c.NotNull:
		return fmt.Sprintf("column %s (role sequence) allows NULL, and a row with NULL there has no place in its key's order (%s SET NOT NULL)", quoteIdent(c.Name), alter)
	}
	return ""
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

// isHead is the template of the claim's condition that the candidate row (the bare table
// of the row choice) has no earlier row of its key that is pending, or
// dead under block, and that no other row of its key is leased: pending,
// tried (a claim counts the attempt) and not due. Each NOT EXISTS is one
// probe of a partial index that migrate makes (orderIndexes).
func (s *Schema) isHead(onDead OnDead) string {
	earlier := func(status string) string {
		return fmt.Sprintf(`NOT EXISTS (SELECT 1 FROM {table} p WHERE p.{ordering_key} = {table}.{ordering_key}
			AND p.{status} = %s AND %s < %s)`, status, s.order("p"), s.order("{table}"))
	}
	cond := earlier("{pending}")
	if onDead == OnDeadBlock {
		cond += " AND " + earlier("{dead}")
	}
	cond += ` AND NOT EXISTS (SELECT 1 FROM {table} p WHERE p.{ordering_key} = {table}.{ordering_key}
			AND p.{status} = {pending} AND p.{attempts} > 0 AND p.{next_attempt_at} > now() AND p.{id} <> {table}.{id})`
	return " AND ({ordering_key} IS NULL OR (" + cond + "))"
}

// orderIndexes are the indexes the head test probes: the key's rows in
// order, one index of the pending rows and one of the (few) dead rows, and
// the (few) leased rows of each key.
func (s *Schema) orderIndexes() []string {
	var cols []string
	for _, r := range append([]Role{RoleOrderingKey}, s.orderColumns()...) {
		cols = append(cols, placeholder(r))
	}
	index := `CREATE INDEX IF NOT EXISTS {index} ON {table} (` + strings.Join(cols, ", ") + `) WHERE {status} = `
	return []string{
		s.expand(index+`{pending}`, "{index}", quoteIdent(s.Table.Name+"_order_idx")),
		s.expand(index+`{dead}`, "{index}", quoteIdent(s.Table.Name+"_order_dead_idx")),
		s.expand(`CREATE INDEX IF NOT EXISTS {index} ON {table} ({ordering_key}, {next_attempt_at}) WHERE {status} = {pending} AND {attempts} > 0`,
			"{index}", quoteIdent(s.Table.Name+"_order_leased_idx")),
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
	s.claimLock = `SELECT pg_advisory_xact_lock(hashtext('outbox-relay claim'), hashtext($1))`
	// The claim returns each row's key, for the claim of its successor.
	claim += ", o.{ordering_key}::text"
	s.claimDue = x(fmt.Sprintf(claim, due+head))
	s.dueIDs = x(dueIDsTemplate(due, head))
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
	s.nextDue = x(nextDueTemplate(head))
}

// claimRows runs a claim statement. On an ordered table the claims take
// turns: the statement runs once it holds the table's claim lock, in the
// same implicit transaction and round trip, so that its snapshot sees
// every claim before it committed. finish ends the statement (and on an
// ordered table commits it): only when it returns nil was anything
// claimed. It may be called again.
func (s *Store) claimRows(ctx context.Context, sql string, args ...any) (rows pgx.Rows, finish func() error, err error) {
	if s.claimLock == "" {
		rows, err := s.pool.Query(ctx, sql, args...)
		if err != nil {
			return nil, nil, err
		}
		return rows, func() error { rows.Close(); return rows.Err() }, nil
	}
	b := &pgx.Batch{}
	b.Queue(s.claimLock, s.schema.Table.Ident())
	b.Queue(sql, args...)
	br := s.pool.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		return nil, nil, errors.Join(err, br.Close())
	}
	if rows, err = br.Query(); err != nil {
		return nil, nil, errors.Join(err, br.Close())
	}
	var done error
	finished := false
	return rows, func() error {
		if !finished {
			rows.Close()
			done, finished = errors.Join(rows.Err(), br.Close()), true
		}
		return done
	}, nil
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
