package store

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Stats summarises the outbox.
type Stats struct {
	Pending, Delivered, Dead int64
	OldestPending            time.Duration // age of the oldest pending row; 0 when none
	// Ordering is set when rows are delivered in order per key.
	Ordering *OrderingStats `json:"ordering,omitempty"`
}

// Stats counts pending and dead rows and ages the oldest pending one. Both
// counts read partial indexes (see MigrateSQL), so a refresh costs the same
// however many delivered rows the table holds. With delivered set it also
// counts delivered rows, a scan of the table's bulk, which only the
// status command asks for (up to a million; past that it reports 1000000).
func (s *Store) Stats(ctx context.Context, delivered bool) (Stats, error) {
	var st Stats
	var oldest float64
	if err := s.pool.QueryRow(ctx, s.schema.statsSQL(delivered)).Scan(&st.Pending, &st.Dead, &st.Delivered, &oldest); err != nil {
		return st, fmt.Errorf("outbox stats: %w", err)
	}
	st.OldestPending = time.Duration(max(oldest, 0) * float64(time.Second))
	if s.Ordered() {
		var err error
		if st.Ordering, err = s.orderingStats(ctx); err != nil {
			return st, err
		}
	}
	return st, nil
}

// statsSQL is the statement of Stats.
func (s *Schema) statsSQL(delivered bool) string {
	countDelivered := "0"
	if delivered {
		countDelivered = `(SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {status} = {delivered} LIMIT 1000000) d)`
	}
	return s.expand(`SELECT
		(SELECT count(*) FROM {table} WHERE {status} = {pending}),
		(SELECT count(*) FROM {table} WHERE {status} = {dead}),
		` + countDelivered + `,
		coalesce((SELECT extract(epoch FROM now() - min({created_at})::timestamptz) FROM {table} WHERE {status} = {pending}), 0)::float8`)
}

// RequeueFilter selects rows to move back to pending: dead ones, or
// delivered ones to send again. Empty fields match everything.
type RequeueFilter struct {
	Status string    // StatusDead (also when empty) or StatusDelivered
	IDs    []string  // in the id column's text form
	Type   string    // a glob: * and ? wildcards
	Since  time.Time // rows created at or after
	Limit  int       // at most this many, the oldest first; 0: no bound
}

// status is the condition on the status column.
func (f RequeueFilter) status() string {
	if f.Status == StatusDelivered {
		return "{status} = {delivered}"
	}
	return "{status} = {dead}"
}

// where is f as a condition on the table and its arguments.
func (f RequeueFilter) where() (string, []any) {
	where := []string{f.status()}
	var args []any
	if len(f.IDs) > 0 {
		args = append(args, f.IDs)
		where = append(where, fmt.Sprintf("{id} = ANY($%d::text[]::{idtype}[])", len(args)))
	}
	if f.Type != "" {
		args = append(args, globToLike(f.Type))
		// E'' spells the backslash the same whatever
		// standard_conforming_strings says.
		where = append(where, fmt.Sprintf(`{event_type} LIKE $%d ESCAPE E'\\'`, len(args)))
	}
	if !f.Since.IsZero() {
		args = append(args, f.Since)
		where = append(where, fmt.Sprintf("{created_at}::timestamptz >= $%d", len(args)))
	}
	return strings.Join(where, " AND "), args
}

// RequeueMatches counts the rows f selects, whatever its Limit.
func (s *Store) RequeueMatches(ctx context.Context, f RequeueFilter) (int64, error) {
	q, args := s.schema.requeueMatchesSQL(f)
	var n int64
	if err := s.pool.QueryRow(ctx, q, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("requeue: %w", err)
	}
	return n, nil
}

// Requeue moves the rows f selects back to pending, due now, as if never
// tried: attempts 0, no last_error, no delivered_at. A delivered row is
// then sent again with its own event_id. With dryRun it only counts them.
// Pending rows are never touched.
func (s *Store) Requeue(ctx context.Context, f RequeueFilter, dryRun bool) (int64, error) {
	q, args := s.schema.requeueSQL(f, dryRun)
	var n int64
	if err := s.pool.QueryRow(ctx, q, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("requeue: %w", err)
	}
	return n, nil
}

// requeueMatchesSQL is the statement of RequeueMatches and its arguments.
func (s *Schema) requeueMatchesSQL(f RequeueFilter) (string, []any) {
	cond, args := f.where()
	return s.expand(`SELECT count(*) FROM {table} WHERE ` + cond), args
}

// requeueSQL is the statement of Requeue and its arguments.
func (s *Schema) requeueSQL(f RequeueFilter, dryRun bool) (string, []any) {
	cond, args := f.where()
	// LIMIT NULL is no limit.
	var limit *int
	if f.Limit > 0 {
		limit = &f.Limit
	}
	args = append(args, limit)
	picked := fmt.Sprintf(`SELECT {id} FROM {table} WHERE %s ORDER BY {created_at}, {id} LIMIT $%d`, cond, len(args))
	q := `SELECT count(*) FROM (` + picked + `) picked`
	if !dryRun {
		// FOR UPDATE: retention may be deleting the same delivered rows.
		q = `WITH moved AS (UPDATE {table} o SET {status} = {pending}, {attempts} = 0, {next_attempt_at} = now(),
			{last_error} = {no_error}, {delivered_at} = NULL
				FROM (` + picked + ` FOR UPDATE) picked WHERE o.{id} = picked.{id} AND o.` + f.status() + ` RETURNING 1)
		SELECT count(*) FROM moved`
	}
	return s.expand(q), args
}

// globToLike turns a shell glob into a LIKE pattern.
func globToLike(g string) string {
	var b strings.Builder
	for _, r := range g {
		switch r {
		case '*':
			b.WriteByte('%')
		case '?':
			b.WriteByte('_')
		case '%', '_', '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// DeleteDelivered deletes at most limit delivered rows delivered before
// cutoff and returns how many it deleted. Small batches keep locks short
// and WAL bursts small.
func (s *Store) DeleteDelivered(ctx context.Context, cutoff time.Time, limit int) (int64, error) {
	tag, err := s.pool.Exec(ctx, s.schema.deleteDeliveredSQL(), cutoff, limit)
	if err != nil {
		return 0, fmt.Errorf("retention: %w", err)
	}
	return tag.RowsAffected(), nil
}

// deleteDeliveredSQL is the statement of DeleteDelivered.
func (s *Schema) deleteDeliveredSQL() string {
	return s.expand(`DELETE FROM {table} WHERE {id} IN (
		SELECT {id} FROM {table} WHERE {status} = {delivered} AND {delivered_at}::timestamptz < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)`)
}
