package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Column is what the catalog says of the column that plays a role.
type Column struct {
	Name    string
	Type    string // the base type's name: int8, varchar, timestamptz, …
	Length  int    // n of varchar(n), in characters; 0 when unbounded
	NotNull bool
	// Sequenced is a column a sequence fills: an identity column, or one
	// whose default is nextval(…).
	Sequenced bool
}

// Schema is an outbox table as the relay uses it: its name, the column
// that plays each role as the catalog describes it, and the status values.
// Every statement is built from it once (New), so a mapping costs nothing
// per event.
type Schema struct {
	Table    Table
	Columns  map[Role]Column
	Statuses Statuses
}

// Planned is the table as `migrate` would create it with these names and
// values, without asking the catalog: what migrate --print shows, and what
// tests and tools that made the table with migrate use.
func Planned(t Table, cols Columns, st Statuses) *Schema {
	s := &Schema{Table: t, Columns: map[Role]Column{}, Statuses: st}
	for _, c := range requiredColumns {
		s.Columns[c.role] = Column{Name: cols[c.role], Type: c.types[0], NotNull: c.role != RoleLastError && c.role != RoleDeliveredAt}
	}
	if st.Integer() {
		s.Columns[RoleStatus] = Column{Name: cols[RoleStatus], Type: "int4", NotNull: true}
	}
	if cols[RoleID] == cols[RoleEventID] {
		s.Columns[RoleID] = Column{Name: cols[RoleID], Type: "uuid", NotNull: true}
	}
	if cols.Has(RoleOrderingKey) {
		s.Columns[RoleOrderingKey] = Column{Name: cols[RoleOrderingKey], Type: "text"}
	}
	if cols.Has(RoleSequence) {
		s.Columns[RoleSequence] = Column{Name: cols[RoleSequence], Type: "int8", NotNull: true, Sequenced: true}
	}
	return s
}

// DefaultSchema is Planned with the default names and values.
func DefaultSchema(t Table) *Schema { return Planned(t, DefaultColumns(), DefaultStatuses()) }

// names is the role mapping of s.
func (s *Schema) names() Columns {
	c := make(Columns, len(s.Columns))
	for r, col := range s.Columns {
		c[r] = col.Name
	}
	return c
}

// col is the quoted name of the column that plays role.
func (s *Schema) col(role Role) string { return quoteIdent(s.Columns[role].Name) }

// The types accepted for each role (pg_type names), the first being what
// migrate creates.
var requiredColumns = []struct {
	role  Role
	types []string
}{
	{RoleID, []string{"int8", "int4", "uuid", "text", "varchar"}},
	{RoleEventID, []string{"uuid", "text", "varchar"}},
	{RoleEventType, []string{"text", "varchar"}},
	{RolePayload, []string{"jsonb", "json", "text"}},
	{RoleStatus, []string{"text", "varchar", "int2", "int4", "int8"}},
	{RoleAttempts, []string{"int4", "int8", "int2"}},
	{RoleNextAttemptAt, []string{"timestamptz", "timestamp"}},
	{RoleLastError, []string{"text", "varchar"}},
	{RoleCreatedAt, []string{"timestamptz", "timestamp"}},
	{RoleDeliveredAt, []string{"timestamptz", "timestamp"}},
}

// ErrNoTable is returned by Inspect when the table does not exist.
var ErrNoTable = errors.New("table does not exist")

// Inspect reads the columns that play the roles in cols from the catalog
// and returns the schema the relay will work with, or an error that names
// every column the relay could not read or write correctly, what it found
// and the fix. A table that passes must work: what the check accepts, the
// statements handle (a NOT NULL last_error gets ”, a varchar(n) one is
// cut to n characters, timestamps without time zone are read and written
// in the session's TimeZone).
func Inspect(ctx context.Context, q Querier, t Table, cols Columns, st Statuses) (*Schema, error) {
	found, idUnique, err := readColumns(ctx, q, t, cols[RoleID])
	if err != nil {
		return nil, err
	}
	s := &Schema{Table: t, Columns: map[Role]Column{}, Statuses: st}
	var problems []string
	for _, rc := range requiredColumns {
		name := cols[rc.role]
		c, ok := found[name]
		if !ok {
			problems = append(problems, fmt.Sprintf("missing column %s for role %s (add it, or map the role to your column with RELAY_COLUMNS=%s=<column>)",
				quoteIdent(name), rc.role, rc.role))
			continue
		}
		if !slices.Contains(rc.types, c.Type) {
			problems = append(problems, fmt.Sprintf("column %s (role %s) is %s, want %s", quoteIdent(name), rc.role, c.Type, strings.Join(rc.types, " or ")))
			continue
		}
		s.Columns[rc.role] = c
		if p := s.checkColumn(rc.role, c, idUnique); p != "" {
			problems = append(problems, p)
		}
	}
	for _, rc := range optionalColumns {
		name, ok := cols[rc.role]
		if !ok {
			continue
		}
		c, ok := found[name]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("missing column %s for role %s (RELAY_COLUMNS maps it; add the column or drop %s=%s)",
				quoteIdent(name), rc.role, rc.role, name))
		case !slices.Contains(rc.types, c.Type):
			problems = append(problems, fmt.Sprintf("column %s (role %s) is %s, want %s", quoteIdent(name), rc.role, c.Type, strings.Join(rc.types, " or ")))
		default:
			s.Columns[rc.role] = c
			if p := s.checkColumn(rc.role, c, false); p != "" {
				problems = append(problems, p)
			}
		}
	}
	order := ""
	if !cols.Has(RoleSequence) { // a mapped one is judged above
		order = s.orderProblem()
	}
	if order != "" {
		problems = append(problems, order)
	}
	if len(problems) > 0 {
		return nil, &SchemaError{Table: t, Problems: problems, cannotOrder: order != ""}
	}
	return s, nil
}

// The types accepted for the optional roles, when mapped.
var optionalColumns = []struct {
	role  Role
	types []string
}{
	{RoleOrderingKey, []string{"text", "varchar", "int8", "int4", "int2", "uuid"}},
	{RoleSequence, []string{"int8", "int4"}},
	{RoleTraceparent, []string{"text", "varchar", "bpchar"}},
	{RoleTracestate, []string{"text", "varchar"}},
}

// Has reports whether the optional role r is played by a column.
func (s *Schema) Has(r Role) bool {
	_, ok := s.Columns[r]
	return ok
}

// SchemaError is a table the relay cannot use as it is: each problem names
// the column, what was found and the fix.
type SchemaError struct {
	Table    Table
	Problems []string
	// cannotOrder is set when one problem is that the rows of a key have
	// no order the relay can follow (ErrCannotOrder).
	cannotOrder bool
}

func (e *SchemaError) Error() string {
	return fmt.Sprintf("outbox table %s: %s", e.Table, strings.Join(e.Problems, "; "))
}

// Is makes a SchemaError that says the table cannot order a key's rows
// match ErrCannotOrder.
func (e *SchemaError) Is(target error) bool { return target == ErrCannotOrder && e.cannotOrder }

// checkColumn returns what is wrong with c playing role, with the fix.
func (s *Schema) checkColumn(role Role, c Column, idUnique bool) string {
	alter := fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s", s.Table.Ident(), quoteIdent(c.Name))
	switch role {
	case RoleID:
		if !idUnique {
			return fmt.Sprintf("column %s (role id) is neither the primary key nor unique: a claim must name one row (map id to the primary key)", quoteIdent(c.Name))
		}
	case RoleStatus:
		if isInteger(c.Type) && !s.Statuses.Integer() {
			return fmt.Sprintf("column %s (role status) is %s but the status values %s, %s, %s are not integers (set RELAY_STATUS_VALUES=pending=0,delivered=1,dead=2 to yours)",
				quoteIdent(c.Name), c.Type, s.Statuses.Pending, s.Statuses.Delivered, s.Statuses.Dead)
		}
		for _, v := range []string{s.Statuses.Pending, s.Statuses.Delivered, s.Statuses.Dead} {
			if c.Length > 0 && len([]rune(v)) > c.Length {
				return fmt.Sprintf("column %s (role status) is varchar(%d), too short for the status value %q (%s TYPE varchar(%d), or choose shorter RELAY_STATUS_VALUES)",
					quoteIdent(c.Name), c.Length, v, alter, len([]rune(v)))
			}
		}
	case RoleNextAttemptAt:
		if !c.NotNull {
			return fmt.Sprintf("column %s (role next_attempt_at) allows NULL, and a row with NULL there is never due (%s SET NOT NULL)", quoteIdent(c.Name), alter)
		}
	case RoleDeliveredAt:
		if c.NotNull {
			return fmt.Sprintf("column %s (role delivered_at) is NOT NULL, but it stays empty until an event is delivered (%s DROP NOT NULL)", quoteIdent(c.Name), alter)
		}
	case RoleSequence:
		return s.checkSequence(c, alter)
	}
	return ""
}

func isInteger(typ string) bool { return typ == "int2" || typ == "int4" || typ == "int8" }

// readColumns reads every column of t, and whether idColumn is the key of
// a unique index of its own (the primary key or a UNIQUE constraint).
func readColumns(ctx context.Context, q Querier, t Table, idColumn string) (map[string]Column, bool, error) {
	rows, err := q.Query(ctx, `SELECT a.attname, ty.typname,
	CASE WHEN ty.typname IN ('varchar', 'bpchar') AND a.atttypmod > 4 THEN a.atttypmod - 4 ELSE 0 END,
	a.attnotnull,
	a.attidentity <> '' OR coalesce(pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%', false),
	EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indisunique
		AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum AND i.indpred IS NULL) AND a.attname = $2
FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
	LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped`, t.Ident(), idColumn)
	if err != nil {
		return nil, false, fmt.Errorf("read columns of %s: %w", t, err)
	}
	defer rows.Close()
	found := map[string]Column{}
	idUnique := false
	for rows.Next() {
		var c Column
		var unique bool
		if err := rows.Scan(&c.Name, &c.Type, &c.Length, &c.NotNull, &c.Sequenced, &unique); err != nil {
			return nil, false, fmt.Errorf("read columns of %s: %w", t, err)
		}
		found[c.Name] = c
		idUnique = idUnique || unique
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("read columns of %s: %w", t, err)
	}
	if len(found) == 0 {
		return nil, false, fmt.Errorf("outbox table %s: %w (run outbox-relay migrate)", t, ErrNoTable)
	}
	return found, idUnique, nil
}

// CheckSchema reports whether t, as migrate makes it, is usable: Inspect
// with the default columns and statuses.
func CheckSchema(ctx context.Context, q Querier, t Table) error {
	_, err := Inspect(ctx, q, t, DefaultColumns(), DefaultStatuses())
	return err
}
