package store

import (
	"strings"

	"github.com/jackc/pgx/v5"
)

// How names and values of the configuration enter SQL text: a column's name
// through quoteIdent, a configured value where no parameter can stand
// through QuoteLiteral. quoting_test.go and the fuzz target check that a
// crafted one stays data.

// QuoteLiteral quotes s as an SQL string literal, for the places where a
// parameter cannot stand: a DO block, an index predicate, a replication
// command.
//
// With standard_conforming_strings off, a backslash in a plain literal
// escapes the next character. The literal is written so that it reads the
// same whatever that setting is, rather than the setting pinned on the
// relay's pool: the same text also goes where no pool setting reaches
// (migrate --print, run by hand in any session). A string with a
// backslash is an escape string (E'a\\b') with every backslash doubled;
// one without stays plain, which is also the only form a replication
// command reads.
func QuoteLiteral(s string) string {
	q := "'" + strings.ReplaceAll(s, "'", "''") + "'"
	if !strings.Contains(s, `\`) {
		return q
	}
	return "E" + strings.ReplaceAll(q, `\`, `\\`)
}

// quoteIdent quotes one name as an SQL identifier.
func quoteIdent(name string) string { return pgx.Identifier{name}.Sanitize() }
