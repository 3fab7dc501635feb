package store

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/outbox-relay/outbox-relay/internal/handover"
)

// The statements' templates, expanded once per table by buildStatements.
//
// One statement claims: the subquery picks pending, due rows and locks
// them with SKIP LOCKED so racing claimers never get the same row; the
// UPDATE moves next_attempt_at past the lease and counts the attempt. A
// row that already used every attempt (the relay died holding it each
// time) is buried instead of sent again.
const (
	claimSet = `
UPDATE {table} o SET
	{attempts} = coalesce(o.{attempts}, 0) + 1,
	{next_attempt_at} = now() + $1::float8 * interval '1 second',
	{status} = CASE WHEN coalesce(o.{attempts}, 0) >= $2 THEN {dead} ELSE o.{status} END,
	{last_error} = CASE WHEN coalesce(o.{attempts}, 0) >= $2 THEN {gave_up} ELSE o.{last_error} END
FROM (`
	dueRows = `
	SELECT {id} FROM {table}
	WHERE {status} = {pending} AND {next_attempt_at} <= now() %s
		AND NOT {id} = ANY($5::text[]::{idtype}[])
	ORDER BY {next_attempt_at}
	LIMIT $3
	FOR UPDATE SKIP LOCKED`
	// By id (the stream), each id is one primary-key lookup: a lateral
	// subquery per id, so that the plan does not hang on the table's
	// statistics. Right after a burst, before ANALYZE, the planner takes
	// the pending rows for few: given the ids as a list (or even joined),
	// it walks the due index and filters every pending row against them.
	// The status is {is_pending} for the same reason (see expand).
	idRows = `
	SELECT r.{id} FROM unnest($4::text[]) AS k(id) CROSS JOIN LATERAL (
		SELECT {id} FROM {table}
		WHERE {id} = k.id::{idtype} AND {status} = {is_pending} AND {next_attempt_at} <= now()
			AND NOT {id} = ANY($5::text[]::{idtype}[])
		FOR UPDATE SKIP LOCKED) r
	LIMIT $3`
	claimTail = `
) due
WHERE o.{id} = due.{id}
RETURNING o.{id}::text, o.{event_id}::text, o.{event_type}::text, coalesce(o.{payload}::text, 'null'),
	coalesce(o.{created_at}::timestamptz, now()), o.{attempts}::int, o.{status} = {dead}`
	// claimTemplate is the sweep's claim; %s takes the due predicate.
	claimTemplate = claimSet + dueRows + claimTail

	// recordTemplate writes outcomes. The attempts guard makes a late
	// writer (whose lease ran out and whose row was claimed again) a no-op
	// instead of a lie.
	recordTemplate = `
UPDATE {table} o SET
	{status} = CASE r.status WHEN 'delivered' THEN {delivered} WHEN 'dead' THEN {dead} ELSE o.{status} END,
	{attempts} = o.{attempts} + r.fresh::int - r.uncount::int,
	{next_attempt_at} = CASE WHEN r.status = 'pending' THEN r.next ELSE o.{next_attempt_at} END,
	{delivered_at} = CASE WHEN r.status = 'delivered' THEN now() ELSE o.{delivered_at} END,
	{last_error} = CASE WHEN r.status = 'delivered' THEN {no_error} ELSE {r_err} END
FROM unnest($1::text[], $2::int[], $3::text[], $4::timestamptz[], $5::text[], $6::bool[], $7::bool[]) AS r(id, attempt, status, next, err, uncount, fresh)
WHERE o.{id} = r.id::{idtype} AND o.{attempts} = r.attempt - r.fresh::int AND o.{status} = {is_pending}
RETURNING o.{id}::text`

	// leaseTemplate claims a fresh row whose send runs long, if nobody
	// claimed it since it was inserted.
	leaseTemplate = `
UPDATE {table} SET {attempts} = {attempts} + 1, {next_attempt_at} = now() + $3::float8 * interval '1 second'
WHERE {id} = $1::text::{idtype} AND {attempts} = $2 AND {status} = {is_pending}`

	// releaseTemplate gives a lease back on shutdown: it un-counts the
	// attempt that never happened and makes the row due at once.
	releaseTemplate = `
UPDATE {table} o SET {attempts} = o.{attempts} - 1, {next_attempt_at} = now()
FROM unnest($1::text[], $2::int[]) AS r(id, attempt)
WHERE o.{id} = r.id::{idtype} AND o.{attempts} = r.attempt AND o.{status} = {is_pending}`
)

// buildStatements expands the templates for the store's table, and the
// ordered claims when the ordering_key role is mapped.
func (s *Store) buildStatements() {
	x, due := s.schema.expand, dueClause()
	claim := claimTemplate + s.schema.traceReturning()
	s.claimIDs = x(claimSet + idRows + claimTail + s.schema.traceReturning())
	s.claimDue = x(fmt.Sprintf(claim, due))
	s.dueIDs = x(dueIDsTemplate(due, ""))
	s.record = x(recordTemplate)
	s.lease = x(leaseTemplate)
	s.release = x(releaseTemplate)
	s.nextDue = x(nextDueTemplate(""))
	if s.schema.Has(RoleOrderingKey) {
		s.orderedStatements(claim, due)
	}
}

// dueClause is the sweep's part of the hand-over rule, with the grace in
// $4: rows never tried wait for it (internal/handover).
func dueClause() string {
	return "AND " + handover.MayTake("{attempts}", "{next_attempt_at}", "$4")
}

// dueIDsTemplate lists the ids a sweep would claim, for the claim by id
// that finds the rows the database refuses; head is the ordered claims'
// predicate, or empty.
func dueIDsTemplate(due, head string) string {
	return `SELECT {id}::text FROM {table}
	WHERE {status} = {pending} AND {next_attempt_at} <= now() ` + strings.ReplaceAll(due, "$4", "$2") + head + `
		AND NOT {id} = ANY($3::text[]::{idtype}[])
	ORDER BY {next_attempt_at} LIMIT $1`
}

// nextDueTemplate is two walks of the partial index in due order, each
// stopping at its first row: a min() over a CASE would read every pending
// row, and the sweeper asks after every batch of recorded retries. It is
// measured on the server's clock, so a skewed relay clock cannot make the
// sweeper wake early or late. head is the ordered claims' predicate, or
// empty.
func nextDueTemplate(head string) string {
	return `SELECT extract(epoch FROM least(
	(SELECT {next_attempt_at} FROM {table} WHERE {status} = {pending} AND {attempts} > 0` + head + ` ORDER BY {next_attempt_at} LIMIT 1),
	(SELECT {next_attempt_at} FROM {table} WHERE {status} = {pending} AND {attempts} = 0` + head + ` ORDER BY {next_attempt_at} LIMIT 1)
		+ ` + handover.GraceSQL("$1") + ` * interval '1 second') - now()::timestamptz)::float8`
}

// expand fills the placeholders of a statement template: {table}, a
// role's column ({status}), a status value ({pending}), the id's type for
// casts ({idtype}), the last_error values that fit the column, and extra
// (placeholder, SQL) pairs of the caller.
//
// A template is expanded once, in one pass, and what it puts in is never
// expanded again: a configured name or value may spell a placeholder
// ({dead}), and expanding it a second time would put the value of that
// placeholder, unquoted, into the statement. So templates are built from
// templates (placeholder, not s.col(r)), and only a whole statement, or a
// part that is then only joined to other expanded parts, is expanded.
// Names reach SQL only as quoted identifiers and values only as literals.
// Status values are literals, not parameters: the planner matches a
// partial index (due, dead, order) only against a constant, and the DDL
// (an index predicate, a column default) takes no parameters.
func (s *Schema) expand(sql string, extra ...string) string {
	pairs := []string{"{table}", s.Table.Ident(), "{idtype}", s.idType(),
		"{pending}", s.statusLiteral(s.Statuses.Pending),
		// The pending status as a value the planner cannot see: the writes
		// by id compare with it, so that no index on the status (the due
		// index, a user's own) is a way to them. Given the constant, the
		// planner proves the due index's predicate and, on statistics that
		// say few rows are pending (a table never analyzed, or analyzed
		// when nearly all was delivered, then given a burst), walks it and
		// filters every pending row for each id: 5.6 ms for 16 outcomes at
		// 20,000 pending, against 0.2 ms by the primary key.
		"{is_pending}", "(SELECT " + s.statusLiteral(s.Statuses.Pending) + ")",
		"{delivered}", s.statusLiteral(s.Statuses.Delivered),
		"{dead}", s.statusLiteral(s.Statuses.Dead),
		"{no_error}", s.noError(),
		"{r_err}", s.errorValue("r.err"),
		"{gave_up}", s.errorValue(QuoteLiteral("gave up: the relay stopped during each of the last attempts")),
	}
	for r := range s.Columns {
		pairs = append(pairs, placeholder(r), s.col(r))
	}
	if s.Has(RoleOrderingKey) {
		pairs = append(pairs, "{keytype}", s.Columns[RoleOrderingKey].Type)
	}
	return strings.NewReplacer(append(pairs, extra...)...).Replace(sql)
}

// placeholder is the template's name for the column that plays role.
func placeholder(role Role) string { return "{" + string(role) + "}" }

// idType is the type ids are cast to from their text form.
func (s *Schema) idType() string {
	switch s.Columns[RoleID].Type {
	case "int2":
		return "smallint"
	case "int4":
		return "integer"
	case "int8":
		return "bigint"
	case "uuid":
		return "uuid"
	}
	return "text"
}

// statusLiteral is v as SQL: a number for an integer status column (in
// its canonical form, so that only digits and a sign reach the statement),
// a quoted literal otherwise.
func (s *Schema) statusLiteral(v string) string {
	if isInteger(s.Columns[RoleStatus].Type) {
		if n, err := strconv.ParseInt(v, 10, 32); err == nil {
			return strconv.FormatInt(n, 10)
		}
		// Inspect refuses this; as a literal it fails at the server.
	}
	return QuoteLiteral(v)
}

// noError is what last_error holds when there is none.
func (s *Schema) noError() string {
	if s.Columns[RoleLastError].NotNull {
		return "''"
	}
	return "NULL"
}

// errorValue is expr cut to what the last_error column holds: left()
// counts characters, as varchar(n) does.
func (s *Schema) errorValue(expr string) string {
	if n := s.Columns[RoleLastError].Length; n > 0 {
		return fmt.Sprintf("left(%s, %d)", expr, n)
	}
	return expr
}
