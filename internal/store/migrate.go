package store

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// MigrateSQL is the idempotent DDL for the table of s and its publication,
// as migrate --print shows it. On a table that exists it changes no
// column: CREATE TABLE IF NOT EXISTS leaves it as it is, and the indexes
// are made on the mapped columns with the mapped pending and dead values.
// The publication is last and separate: Migrate makes it as the stream
// does (EnsurePublication) and tolerates a failure.
func MigrateSQL(s *Schema, publication string) []string {
	stmts := s.tableSQL()
	if publication != "" {
		stmts = append(stmts, PublicationSQL(s.Table, publication))
	}
	return stmts
}

// tableSQL is the idempotent DDL for the table and its indexes.
func (s *Schema) tableSQL() []string {
	t := s.Table
	stmts := []string{
		fmt.Sprintf(`CREATE SCHEMA IF NOT EXISTS %s`, quoteIdent(t.Schema)),
		s.createTable(),
		// The sweep reads only pending rows in due order: this index keeps
		// it O(batch) however many delivered rows the table holds.
		s.expand(`CREATE INDEX IF NOT EXISTS {index} ON {table} ({next_attempt_at}) WHERE {status} = {pending}`,
			"{index}", quoteIdent(t.Name+"_due_idx")),
		// Dead rows are few; this keeps counting them (every metrics
		// refresh) and requeueing them from scanning the whole table.
		s.expand(`CREATE INDEX IF NOT EXISTS {index} ON {table} ({created_at}) WHERE {status} = {dead}`,
			"{index}", quoteIdent(t.Name+"_dead_idx")),
	}
	if s.Has(RoleOrderingKey) {
		stmts = append(stmts, s.orderIndexes()...)
	}
	return stmts
}

// createTable is the CREATE TABLE of docs/table.md with the mapped names: a
// uuid primary key when the id also serves as event_id, an integer status
// when the status values are integers, the optional columns mapped.
func (s *Schema) createTable() string {
	status := "text NOT NULL DEFAULT {pending}"
	if s.Statuses.Integer() {
		status = "integer NOT NULL DEFAULT {pending}"
	}
	cols := []struct {
		role Role
		def  string
	}{
		{RoleID, "bigserial PRIMARY KEY"},
		{RoleEventID, "uuid NOT NULL UNIQUE DEFAULT gen_random_uuid()"},
		{RoleEventType, "text NOT NULL"},
		{RolePayload, "jsonb NOT NULL DEFAULT '{}'"},
		{RoleStatus, status},
		{RoleAttempts, "integer NOT NULL DEFAULT 0"},
		{RoleNextAttemptAt, "timestamptz NOT NULL DEFAULT now()"},
		{RoleLastError, "text"},
		{RoleCreatedAt, "timestamptz NOT NULL DEFAULT now()"},
		{RoleDeliveredAt, "timestamptz"},
	}
	if s.Has(RoleOrderingKey) {
		// NULL: a row without a key is unordered.
		cols = append(cols, struct {
			role Role
			def  string
		}{RoleOrderingKey, "text"})
	}
	if s.Has(RoleSequence) {
		cols = append(cols, struct {
			role Role
			def  string
		}{RoleSequence, "bigserial"})
	}
	shared := s.Columns[RoleID].Name == s.Columns[RoleEventID].Name
	var b strings.Builder
	for _, c := range cols {
		def := c.def
		switch {
		case shared && c.role == RoleID:
			def = "uuid PRIMARY KEY DEFAULT gen_random_uuid()"
		case shared && c.role == RoleEventID:
			continue
		case c.role == RoleSequence && s.Columns[RoleSequence].Name == s.Columns[RoleID].Name:
			continue // the id itself
		}
		if b.Len() > 0 {
			b.WriteString(",\n")
		}
		// Each part is expanded on its own: a quoted name is never
		// expanded again (see expand).
		fmt.Fprintf(&b, "\t%-17s %s", s.col(c.role), s.expand(def))
	}
	return "CREATE TABLE IF NOT EXISTS " + s.Table.Ident() + " (\n" + b.String() + "\n)"
}

// Migrate creates the table, its indexes and the publication when missing,
// then checks the table's columns (Inspect). A failure to create the
// publication (not the owner, no privilege) is returned as pubErr and is
// not fatal: the relay can still run sweep-only.
func Migrate(ctx context.Context, conn Querier, planned *Schema, publication string) (pubErr error, err error) {
	t := planned.Table
	for _, s := range planned.tableSQL() {
		if _, err := conn.Exec(ctx, s); err != nil {
			return nil, fmt.Errorf("migrate %s: %w", t, err)
		}
	}
	if publication != "" {
		pub, err := ReadPublication(ctx, conn, publication, t)
		if err == nil {
			_, err = EnsurePublication(ctx, conn, pub)
		}
		if err != nil {
			pubErr = fmt.Errorf("create publication %s: %w", publication, err)
		}
	}
	_, err = Inspect(ctx, conn, t, planned.names(), planned.Statuses)
	return pubErr, err
}

// Querier is a connection, a pool or a transaction: what the functions of
// this package that take one need.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}
