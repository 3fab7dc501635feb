package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// MigrateSQL is the idempotent DDL for table and its publication, as
// migrate --print shows it. The publication is last and separate: Migrate
// makes it as the stream does (EnsurePublication) and tolerates a failure.
func MigrateSQL(t Table, publication string) []string {
	stmts := tableSQL(t)
	if publication != "" {
		stmts = append(stmts, PublicationSQL(t, publication))
	}
	return stmts
}

// tableSQL is the idempotent DDL for the table and its indexes.
func tableSQL(t Table) []string {
	id := t.Ident()
	idxName := pgx.Identifier{t.Name + "_due_idx"}.Sanitize()
	return []string{
		fmt.Sprintf(`CREATE SCHEMA IF NOT EXISTS %s`, pgx.Identifier{t.Schema}.Sanitize()),
		fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s (
	id              bigserial PRIMARY KEY,
	event_id        uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
	event_type      text NOT NULL,
	payload         jsonb NOT NULL DEFAULT '{}',
	status          text NOT NULL DEFAULT 'pending',
	attempts        integer NOT NULL DEFAULT 0,
	next_attempt_at timestamptz NOT NULL DEFAULT now(),
	last_error      text,
	created_at      timestamptz NOT NULL DEFAULT now(),
	delivered_at    timestamptz
)`, id),
		// The sweep reads only pending rows in due order: this index keeps
		// it O(batch) however many delivered rows the table holds.
		fmt.Sprintf(`CREATE INDEX IF NOT EXISTS %s ON %s (next_attempt_at) WHERE status = 'pending'`, idxName, id),
		// Dead rows are few; this keeps counting them (every metrics
		// refresh) and requeueing them from scanning the whole table.
		fmt.Sprintf(`CREATE INDEX IF NOT EXISTS %s ON %s (created_at) WHERE status = 'dead'`,
			pgx.Identifier{t.Name + "_dead_idx"}.Sanitize(), id),
	}
}

// Migrate creates the table, its index and the publication when missing,
// then checks the table's columns. A failure to create the publication
// (not the owner, no privilege) is returned as pubErr and is not fatal:
// the relay can still run sweep-only.
func Migrate(ctx context.Context, conn Querier, t Table, publication string) (pubErr error, err error) {
	for _, s := range tableSQL(t) {
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
	return pubErr, CheckSchema(ctx, conn, t)
}

// Querier is a connection, a pool or a transaction: what the functions of
// this package that take one need.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// The columns the relay reads and writes, with the types that are accepted
// for each (udt names, as information_schema reports them).
var requiredColumns = []struct {
	name  string
	types []string
}{
	{"id", []string{"int8", "int4"}},
	{"event_id", []string{"uuid"}},
	{"event_type", []string{"text", "varchar"}},
	{"payload", []string{"jsonb"}},
	{"status", []string{"text", "varchar"}},
	{"attempts", []string{"int4", "int8", "int2"}},
	{"next_attempt_at", []string{"timestamptz"}},
	{"last_error", []string{"text", "varchar"}},
	{"created_at", []string{"timestamptz"}},
	{"delivered_at", []string{"timestamptz"}},
}

// ErrNoTable is returned by CheckSchema when the table does not exist.
var ErrNoTable = errors.New("table does not exist")

// CheckSchema verifies that table has every required column with a
// compatible type, and names each one that is missing or wrong.
func CheckSchema(ctx context.Context, conn Querier, t Table) error {
	rows, err := conn.Query(ctx, `SELECT column_name, udt_name FROM information_schema.columns
		WHERE table_schema = $1 AND table_name = $2`, t.Schema, t.Name)
	if err != nil {
		return fmt.Errorf("read columns of %s: %w", t, err)
	}
	have := map[string]string{}
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			return fmt.Errorf("read columns of %s: %w", t, err)
		}
		have[name] = typ
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read columns of %s: %w", t, err)
	}
	if len(have) == 0 {
		return fmt.Errorf("outbox table %s: %w (run outbox-relay migrate)", t, ErrNoTable)
	}
	var problems []string
	for _, c := range requiredColumns {
		typ, ok := have[c.name]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("missing column %s (%s)", c.name, c.types[0]))
		case !slices.Contains(c.types, typ):
			problems = append(problems, fmt.Sprintf("column %s is %s, want %s", c.name, typ, strings.Join(c.types, " or ")))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("outbox table %s: %s", t, strings.Join(problems, "; "))
	}
	return nil
}
