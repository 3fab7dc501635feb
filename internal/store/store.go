// Package store holds every SQL statement the relay runs: against the outbox
// table, and the catalog reads (slots, publication) of the stream and guard. The table is the queue: a row is claimed by pushing its
// next_attempt_at forward (a lease), so no transaction stays open while the
// runner is being called.
package store

import (
	"encoding/json"
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
// Sequential scans, hash joins and merge joins are off too: every relay
// statement finds its rows by an index (by id, by key, or the due index
// in order), so a plan may not read the table instead. A session caches a
// generic plan after a statement's fifth run; made while a new table was
// small, a hash join over a scan of the table is cheapest, and it would
// stay cached while a burst grows the table, reading every pending row
// for each batch of ids. With those plans off, the cached plan is the
// lookup by index whatever the table's size, and the statements keep
// their cached plans (planning each run cost more database CPU per event
// than the lookups themselves; docs/decisions).
func Configure(cfg *pgxpool.Config) {
	cfg.ConnConfig.RuntimeParams["application_name"] = "outbox-relay"
	for _, plan := range []string{"enable_bitmapscan", "enable_seqscan", "enable_hashjoin", "enable_mergejoin"} {
		cfg.ConnConfig.RuntimeParams[plan] = "off"
	}
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
