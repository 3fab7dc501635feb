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

// Outcome statuses, as stored in the status column.
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
	ID        int64
	EventID   string
	Type      string
	Payload   json.RawMessage // the stored jsonb text, sent as it is
	CreatedAt time.Time
	Attempt   int // this attempt's number, 1 for the first
}

// Result is the outcome of one attempt, to be recorded.
type Result struct {
	ID      int64
	Attempt int    // the attempt the row was claimed with; guards the update
	Status  string // pending (retry), delivered or dead
	Next    time.Time
	Error   string
}

// Store runs the outbox queries on a pool.
type Store struct {
	pool  *pgxpool.Pool
	table Table

	claimIDs, claimDue, record, release, nextDue string
}

// Configure sets what the relay's sessions need on a pool configuration.
//
// Bitmap scans are off: right after a burst of inserts the table's
// statistics still say it is small, and the planner then answers the sweep's
// ORDER BY next_attempt_at LIMIT n with a bitmap scan of every pending row
// and a sort: 48 ms a claim at 80,000 pending rows, so a 100,000-row burst
// took quadratic time. Without bitmap scans it walks the partial index in
// order and stops after n rows (0.1 ms). None of the relay's statements
// gains from a bitmap scan.
func Configure(cfg *pgxpool.Config) {
	cfg.ConnConfig.RuntimeParams["application_name"] = "outbox-relay"
	cfg.ConnConfig.RuntimeParams["enable_bitmapscan"] = "off"
}

// New prepares the statements for table. Queries go through pgx's
// statement cache, so each is parsed once per connection.
func New(pool *pgxpool.Pool, table Table) *Store {
	t := table.Ident()
	// One statement claims: the subquery picks pending, due rows and locks
	// them with SKIP LOCKED so racing claimers never get the same row; the
	// UPDATE moves next_attempt_at past the lease and counts the attempt.
	// A row that already used every attempt (the relay died holding it each
	// time) is buried instead of sent again.
	const claim = `
UPDATE %[1]s o SET
	attempts = o.attempts + 1,
	next_attempt_at = now() + $1::float8 * interval '1 second',
	status = CASE WHEN o.attempts >= $2 THEN 'dead' ELSE o.status END,
	last_error = CASE WHEN o.attempts >= $2 THEN 'gave up: the relay stopped during each of the last attempts' ELSE o.last_error END
FROM (
	SELECT id FROM %[1]s
	WHERE status = 'pending' AND next_attempt_at <= now() %[2]s
	ORDER BY next_attempt_at
	LIMIT $3
	FOR UPDATE SKIP LOCKED
) due
WHERE o.id = due.id
RETURNING o.id, o.event_id::text, o.event_type, coalesce(o.payload::text, 'null'),
	coalesce(o.created_at, now()), o.attempts, o.status`
	return &Store{
		pool:     pool,
		table:    table,
		claimIDs: fmt.Sprintf(claim, t, "AND id = ANY($4::bigint[])"),
		claimDue: fmt.Sprintf(claim, t, "AND (attempts > 0 OR next_attempt_at <= now() - $4::float8 * interval '1 second')"),
		// The attempts guard makes a late writer (whose lease ran out and
		// whose row was claimed again) a no-op instead of a lie.
		record: fmt.Sprintf(`
UPDATE %[1]s o SET
	status = r.status,
	next_attempt_at = CASE WHEN r.status = 'pending' THEN r.next ELSE o.next_attempt_at END,
	delivered_at = CASE WHEN r.status = 'delivered' THEN now() ELSE o.delivered_at END,
	last_error = CASE WHEN r.status = 'delivered' THEN NULL ELSE r.err END
FROM unnest($1::bigint[], $2::int[], $3::text[], $4::timestamptz[], $5::text[]) AS r(id, attempt, status, next, err)
WHERE o.id = r.id AND o.attempts = r.attempt AND o.status = 'pending'`, t),
		// Giving a lease back on shutdown un-counts the attempt that never
		// happened and makes the row due at once.
		release: fmt.Sprintf(`
UPDATE %[1]s o SET attempts = o.attempts - 1, next_attempt_at = now()
FROM unnest($1::bigint[], $2::int[]) AS r(id, attempt)
WHERE o.id = r.id AND o.attempts = r.attempt AND o.status = 'pending'`, t),
		// Measured on the server's clock, so a skewed relay clock cannot
		// make the sweeper wake early or late.
		// Two walks of the partial index in due order, each stopping at
		// its first row: a min() over a CASE would read every pending row,
		// and the sweeper asks after every batch of recorded retries.
		// Measured on the server's clock, so a skewed relay clock cannot
		// make the sweeper wake early or late.
		nextDue: fmt.Sprintf(`SELECT extract(epoch FROM least(
	(SELECT next_attempt_at FROM %[1]s WHERE status = 'pending' AND attempts > 0 ORDER BY next_attempt_at LIMIT 1),
	(SELECT next_attempt_at FROM %[1]s WHERE status = 'pending' AND attempts = 0 ORDER BY next_attempt_at LIMIT 1)
		+ $1::float8 * interval '1 second') - now())::float8`, t),
	}
}

// Table is the table this store works on.
func (s *Store) Table() Table { return s.table }

// Pool is the connection pool the store uses.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// ClaimIDs claims those of ids that are pending and due, for lease.
// maxAttempts buries rows that have used every attempt; they come back with
// Status dead and must not be sent.
func (s *Store) ClaimIDs(ctx context.Context, ids []int64, lease time.Duration, maxAttempts int) ([]Row, []Result, error) {
	return s.claim(ctx, s.claimIDs, lease, maxAttempts, len(ids), ids)
}

// ClaimDue claims up to limit pending rows that are due. Rows never tried
// are taken only once they are older than grace, which leaves fresh rows to
// the replication stream while it is healthy; retries are taken when due.
func (s *Store) ClaimDue(ctx context.Context, limit int, grace, lease time.Duration, maxAttempts int) ([]Row, []Result, error) {
	return s.claim(ctx, s.claimDue, lease, maxAttempts, limit, grace.Seconds())
}

func (s *Store) claim(ctx context.Context, sql string, lease time.Duration, maxAttempts, limit int, arg any) ([]Row, []Result, error) {
	rows, err := s.pool.Query(ctx, sql, lease.Seconds(), maxAttempts, limit, arg)
	if err != nil {
		return nil, nil, fmt.Errorf("claim: %w", err)
	}
	defer rows.Close()
	var claimed []Row
	var buried []Result
	for rows.Next() {
		var r Row
		var payload, status string
		if err := rows.Scan(&r.ID, &r.EventID, &r.Type, &payload, &r.CreatedAt, &r.Attempt, &status); err != nil {
			return nil, nil, fmt.Errorf("claim: %w", err)
		}
		if status == StatusDead {
			buried = append(buried, Result{ID: r.ID, Attempt: r.Attempt, Status: StatusDead})
			continue
		}
		r.Payload = json.RawMessage(payload)
		claimed = append(claimed, r)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("claim: %w", err)
	}
	return claimed, buried, nil
}

// Record stores the outcomes of attempts in one statement.
func (s *Store) Record(ctx context.Context, results []Result) error {
	n := len(results)
	ids, attempts := make([]int64, n), make([]int32, n)
	statuses, errs := make([]string, n), make([]string, n)
	nexts := make([]time.Time, n)
	for i, r := range results {
		ids[i], attempts[i], statuses[i], nexts[i], errs[i] = r.ID, int32(r.Attempt), r.Status, r.Next, r.Error
	}
	if _, err := s.pool.Exec(ctx, s.record, ids, attempts, statuses, nexts, errs); err != nil {
		return fmt.Errorf("record outcomes: %w", err)
	}
	return nil
}

// Release gives back the leases of rows that were claimed but not sent.
func (s *Store) Release(ctx context.Context, rows []Row) error {
	ids, attempts := make([]int64, len(rows)), make([]int32, len(rows))
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
