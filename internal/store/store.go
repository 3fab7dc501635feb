// Package store holds every SQL statement the relay runs: against the outbox
// table, and the catalog reads (slots, publication) of the stream and guard. The table is the queue: a row is claimed by pushing its
// next_attempt_at forward (a lease), so no transaction stays open while the
// runner is being called.
package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The relay's own names for the three states; Statuses says what the
// status column stores for each.
const (
	StatusPending   = "pending"
	StatusDelivered = "delivered"
	StatusDead      = "dead"
)

// Table is a schema-qualified outbox table name.
type Table struct {
	Schema, Name string
}

// Ident is the quoted name for use in SQL.
func (t Table) Ident() string {
	return pgx.Identifier{t.Schema, t.Name}.Sanitize()
}

// String is schema.name, unquoted, as users write it.
func (t Table) String() string { return t.Schema + "." + t.Name }

// Row is a claimed outbox row, ready to be sent.
type Row struct {
	ID        string // the id column's text form, whatever its type
	EventID   string
	Type      string
	Payload   json.RawMessage // the stored JSON text, sent as it is
	CreatedAt time.Time
	Attempt   int     // this attempt's number, 1 for the first
	Key       *string // the ordering key's text form; nil without one
	// Traceparent and Tracestate are the W3C trace context the application
	// stored with the event, as stored (unchecked); empty when the roles
	// are not mapped or the row has none.
	Traceparent, Tracestate string
}

// Store runs the outbox queries on a pool.
type Store struct {
	pool   *pgxpool.Pool
	writer Querier // outcome writes (WithWriter); pool by default
	schema *Schema
	onDead OnDead

	claimIDs, claimDue, dueIDs, record, release, nextDue, lease string
	claimKeys, claimLock                                        string // ordered only
	traceCols                                                   int    // see Schema.traceColumns
}

// Configure sets what the relay's sessions need on a pool configuration.
//
// Bitmap scans are off: right after a burst of inserts the table's
// statistics still say it is small, and the planner would answer the
// sweep's ORDER BY next_attempt_at LIMIT n with a bitmap scan of every
// pending row and a sort, a cost that grows with the burst. Without bitmap
// scans it walks the partial index in order and stops after n rows. None
// of the relay's statements gains from a bitmap scan.
//
// Every statement is planned for its parameters and the table as it is,
// never from a generic plan cached by the session: a plan cached while a
// new table was small reads every pending row (or the whole table) to
// find a batch's ids, and stays cached while a burst grows the table,
// until autovacuum's ANALYZE replaces the statistics. Planning costs tens
// of microseconds a statement, and the relay's statements carry batches.
func Configure(cfg *pgxpool.Config) {
	cfg.ConnConfig.RuntimeParams["application_name"] = "outbox-relay"
	cfg.ConnConfig.RuntimeParams["enable_bitmapscan"] = "off"
	cfg.ConnConfig.RuntimeParams["plan_cache_mode"] = "force_custom_plan"
}

// New builds the statements for schema once (statements.go). Queries go
// through pgx's statement cache, so each is parsed once per connection.
// With the ordering_key role mapped, the claims take only the heads of
// their keys (ordering.go); without it, nothing of that is in any
// statement.
func New(pool *pgxpool.Pool, schema *Schema, opts ...Option) *Store {
	s := &Store{
		pool:      pool,
		writer:    pool,
		schema:    schema,
		onDead:    OnDeadSkip,
		traceCols: schema.traceColumns(),
	}
	for _, o := range opts {
		o(s)
	}
	s.buildStatements()
	return s
}

// Table is the table this store works on.
func (s *Store) Table() Table { return s.schema.Table }

// Schema is the table as the store uses it.
func (s *Store) Schema() *Schema { return s.schema }

// Pool is the connection pool the store uses.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Claim is what a claim took: rows to send, and rows that will not be
// sent (dead: buried by the claim, or unreadable) or could not be claimed
// at all (refused by the database).
type Claim struct {
	Rows    []Row
	Dead    []Result
	Refused []Refused
	// Seen are ids an ordered ClaimIDs found but did not claim: their
	// key's head was claimed, is in flight or waits for a retry.
	Seen []string
}

// Len is how many rows the claim took or tried.
func (c Claim) Len() int { return len(c.Rows) + len(c.Dead) + len(c.Refused) }

// ClaimIDs claims those of ids that are pending and due, for lease; with
// rows ordered per key, the head of each id's key instead (ordering.go).
// maxAttempts buries rows that have used every attempt; they come back in
// Dead and must not be sent, as do rows that cannot be read. Ids whose
// claim the database refuses come back in Refused; the others are claimed.
// With an error, the claim holds what the statements before it took (a
// claim halved around refused rows commits each half on its own): the
// caller must send or release those rows all the same.
func (s *Store) ClaimIDs(ctx context.Context, ids []string, lease time.Duration, maxAttempts int) (Claim, error) {
	var c Claim
	refused, err := isolate(ctx, ids, func(id string) string { return id }, func(ctx context.Context, ids []string) error {
		return s.claim(ctx, &c, s.claimIDs, lease, maxAttempts, len(ids), ids, []string{})
	})
	c.Refused = refused
	return c, err
}

// ClaimDue claims up to limit pending rows that are due, but none of skip
// (rows the database refused to write a moment ago). Rows never tried are
// taken only once they are older than grace, which leaves fresh rows to
// the replication stream while it is healthy; retries are taken when due.
// When the database refuses the claim, the due rows are claimed by id so
// that the refused ones are found and the others go on.
func (s *Store) ClaimDue(ctx context.Context, limit int, grace, lease time.Duration, maxAttempts int, skip []string) (Claim, error) {
	if skip == nil {
		skip = []string{}
	}
	var c Claim
	err := s.claim(ctx, &c, s.claimDue, lease, maxAttempts, limit, grace.Seconds(), skip)
	if _, ok := refusal(err); !ok {
		return c, err
	}
	rows, err := s.pool.Query(ctx, s.dueIDs, limit, grace.Seconds(), skip)
	if err != nil {
		return c, fmt.Errorf("claim: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return c, fmt.Errorf("claim: %w", err)
	}
	return s.ClaimIDs(ctx, ids, lease, maxAttempts)
}

func (s *Store) claim(ctx context.Context, c *Claim, sql string, lease time.Duration, maxAttempts, limit int, arg, skip any) error {
	rows, finish, err := s.claimRows(ctx, sql, lease.Seconds(), maxAttempts, limit, arg, skip)
	if err != nil {
		return fmt.Errorf("claim: %w", err)
	}
	defer func() { _ = finish() }()
	var got Claim
	for rows.Next() {
		var cr claimedRow
		if err := rows.Scan(s.scanInto(&cr, sql)...); err != nil {
			return fmt.Errorf("claim: %w", err)
		}
		if cr.seen {
			got.Seen = append(got.Seen, cr.id)
			continue
		}
		r, res := s.schema.read(cr)
		if res != nil {
			got.Dead = append(got.Dead, *res)
			continue
		}
		got.Rows = append(got.Rows, r)
	}
	if err := finish(); err != nil {
		return fmt.Errorf("claim: %w", err)
	}
	// Only a statement that succeeded claimed anything: its transaction
	// is the one that committed.
	c.Rows, c.Dead, c.Seen = append(c.Rows, got.Rows...), append(c.Dead, got.Dead...), append(c.Seen, got.Seen...)
	return nil
}

// claimedRow is a row as the claim returns it, before it is checked.
type claimedRow struct {
	id                 string
	eventID, eventType *string
	payload            string
	createdAt          time.Time
	attempt            int
	buried             bool
	key                *string
	seen               bool // found by an ordered claim by id, not claimed
	// trace context, read only when its roles are mapped
	traceparent, tracestate *string
}

// read turns a claimed row into one to send, or into a dead result when it
// was buried by the claim or cannot be sent: a row without an event id or
// type is the application's mistake, and sending it again will not help.
func (s *Schema) read(c claimedRow) (Row, *Result) {
	res := &Result{ID: c.id, Attempt: c.attempt, Status: StatusDead, Key: c.key}
	switch {
	case c.buried:
		res.Kind = KindBuried
		return Row{}, res
	case c.eventID == nil || *c.eventID == "":
		res.Error = fmt.Sprintf("cannot be sent: %s is empty", s.Columns[RoleEventID].Name)
		return Row{}, res
	case c.eventType == nil:
		res.Error = fmt.Sprintf("cannot be sent: %s is NULL", s.Columns[RoleEventType].Name)
		return Row{}, res
	}
	r := Row{ID: c.id, EventID: *c.eventID, Type: *c.eventType, Payload: s.payload(c.payload),
		CreatedAt: c.createdAt, Attempt: c.attempt, Key: c.key}
	if c.traceparent != nil {
		r.Traceparent = *c.traceparent
		if c.tracestate != nil {
			r.Tracestate = *c.tracestate
		}
	}
	return r, nil
}

// Record stores the outcomes of attempts, in one statement unless the
// database refuses some rows: those come back in refused, the others are
// written. unseen are fresh outcomes (Kind.Fresh) whose row the write did
// not find as it was inserted: not visible yet (a commit reaches the stream
// a moment before it is visible to other sessions) or claimed by someone
// else since; the caller may try them again a moment later. err is a
// failure of the database as a whole (unreachable, read only): nothing need
// have been written, and the batch may be retried.
func (s *Store) Record(ctx context.Context, results []Result) (refused []Refused, unseen []Result, err error) {
	refused, err = isolate(ctx, results, func(r Result) string { return r.ID }, func(ctx context.Context, batch []Result) error {
		u, err := s.recordOnce(ctx, batch)
		if err == nil {
			unseen = append(unseen, u...)
		}
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return refused, unseen, nil
}

// recordOnce writes results and returns the fresh ones it did not find.
func (s *Store) recordOnce(ctx context.Context, results []Result) (unseen []Result, err error) {
	n := len(results)
	ids, attempts := make([]string, n), make([]int32, n)
	statuses, errs := make([]string, n), make([]string, n)
	nexts, uncount, fresh := make([]time.Time, n), make([]bool, n), make([]bool, n)
	for i, r := range results {
		ids[i], attempts[i], statuses[i], nexts[i], errs[i] = r.ID, int32(r.Attempt), r.Status, r.Next, r.Error
		uncount[i] = r.Kind.Uncounted() && r.Status == StatusPending
		fresh[i] = r.Kind.Fresh()
	}
	rows, err := s.writer.Query(ctx, s.record, ids, attempts, statuses, nexts, errs, uncount, fresh)
	if err != nil {
		return nil, fmt.Errorf("record outcomes: %w", err)
	}
	written, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("record outcomes: %w", err)
	}
	if len(written) == n {
		return nil, nil
	}
	found := make(map[string]bool, len(written))
	for _, id := range written {
		found[id] = true
	}
	for _, r := range results {
		if r.Kind.Fresh() && !found[r.ID] {
			unseen = append(unseen, r)
		}
	}
	return unseen, nil
}

// Release gives back the leases of rows that were claimed but not sent;
// refused and err as for Record.
func (s *Store) Release(ctx context.Context, rows []Row) (refused []Refused, err error) {
	return isolate(ctx, rows, func(r Row) string { return r.ID }, s.release1)
}

func (s *Store) release1(ctx context.Context, rows []Row) error {
	ids, attempts := make([]string, len(rows)), make([]int32, len(rows))
	for i, r := range rows {
		ids[i], attempts[i] = r.ID, int32(r.Attempt)
	}
	if _, err := s.pool.Exec(ctx, s.release, ids, attempts); err != nil {
		return fmt.Errorf("release leases: %w", err)
	}
	return nil
}

// NextDue is how long until the earliest pending row is due for the
// sweeper (negative when one is overdue); rows never tried count from their
// next_attempt_at plus grace. ok is false when nothing is pending.
func (s *Store) NextDue(ctx context.Context, grace time.Duration) (d time.Duration, ok bool, err error) {
	var secs *float64
	if err := s.pool.QueryRow(ctx, s.nextDue, grace.Seconds()).Scan(&secs); err != nil {
		return 0, false, fmt.Errorf("next due: %w", err)
	}
	if secs == nil {
		return 0, false, nil
	}
	return time.Duration(*secs * float64(time.Second)), true, nil
}

func quoteIdent(name string) string { return pgx.Identifier{name}.Sanitize() }
