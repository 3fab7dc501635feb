package store

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Role is a part the relay plays on a column of the outbox table. Users
// with a table of their own name the column that plays each role
// (RELAY_COLUMNS); a role not named is played by the column of its own name.
type Role string

// The roles, in the order of the table contract in docs/table.md.
const (
	RoleID            Role = "id"
	RoleEventID       Role = "event_id"
	RoleEventType     Role = "event_type"
	RolePayload       Role = "payload"
	RoleStatus        Role = "status"
	RoleAttempts      Role = "attempts"
	RoleNextAttemptAt Role = "next_attempt_at"
	RoleLastError     Role = "last_error"
	RoleCreatedAt     Role = "created_at"
	RoleDeliveredAt   Role = "delivered_at"
)

// Optional roles add a capability when a column is mapped to them, and
// change nothing when none is.
const (
	RoleOrderingKey Role = "ordering_key" // delivery in order per key
	RoleSequence    Role = "sequence"     // the order of a key's rows, from a sequence
	RoleTraceparent Role = "traceparent"  // W3C trace context, sent as a header
	RoleTracestate  Role = "tracestate"
)

// Roles lists every role the table must have a column for.
var Roles = []Role{RoleID, RoleEventID, RoleEventType, RolePayload, RoleStatus,
	RoleAttempts, RoleNextAttemptAt, RoleLastError, RoleCreatedAt, RoleDeliveredAt}

// OptionalRoles lists the roles played only when RELAY_COLUMNS maps them.
var OptionalRoles = []Role{RoleOrderingKey, RoleSequence, RoleTraceparent, RoleTracestate}

// readOnly roles are only read by the relay, so one column may play two of
// them (event_id=id when the primary key is a UUID). A column the relay
// writes must play one role only, or one write would clobber another.
var readOnly = []Role{RoleID, RoleEventID, RoleEventType, RolePayload, RoleCreatedAt,
	RoleOrderingKey, RoleSequence, RoleTraceparent, RoleTracestate}

// Columns maps each role to the column that plays it. Column names are
// exact (case-sensitive) and always quoted in SQL.
type Columns map[Role]string

// DefaultColumns is the table that `migrate` creates: every role played by
// the column of its own name.
func DefaultColumns() Columns {
	c := make(Columns, len(Roles))
	for _, r := range Roles {
		c[r] = string(r)
	}
	return c
}

// ParseColumns reads "role=column,…" over DefaultColumns. An unknown role,
// a malformed pair, a role named twice, or a written column playing two
// roles is an error naming the culprit.
func ParseColumns(s string) (Columns, error) {
	c := DefaultColumns()
	err := eachPair(s, "role=column", func(k, col string) error {
		role := Role(k)
		switch {
		case !slices.Contains(Roles, role) && !slices.Contains(OptionalRoles, role):
			return fmt.Errorf("unknown role %q (roles: %s)", role, roleList())
		case len(col) > 63 || !isText(col):
			return fmt.Errorf("column %q for role %s is not a valid column name (at most 63 bytes of UTF-8, no NUL)", col, role)
		}
		c[role] = col
		return nil
	})
	if err != nil {
		return nil, err
	}
	return c, c.checkShared()
}

func (c Columns) checkShared() error {
	players := map[string][]Role{}
	for _, r := range c.roles() {
		players[c[r]] = append(players[c[r]], r)
	}
	for _, r := range c.roles() {
		roles := players[c[r]]
		if len(roles) < 2 {
			continue
		}
		for _, x := range roles {
			if !slices.Contains(readOnly, x) {
				return fmt.Errorf("column %q plays %s and %s; a column the relay writes (%s) must play one role only",
					c[r], roles[0], roles[1], x)
			}
		}
	}
	return nil
}

func roleList() string {
	var s []string
	for _, r := range slices.Concat(Roles, OptionalRoles) {
		s = append(s, string(r))
	}
	return strings.Join(s, ", ")
}

// roles are the roles c maps, in order: every required one, then the
// optional ones it names.
func (c Columns) roles() []Role {
	rs := slices.Clone(Roles)
	for _, r := range OptionalRoles {
		if _, ok := c[r]; ok {
			rs = append(rs, r)
		}
	}
	return rs
}

// Has reports whether the optional role r is mapped.
func (c Columns) Has(r Role) bool {
	_, ok := c[r]
	return ok
}

// String is the mapping as RELAY_COLUMNS spells it, roles in order.
func (c Columns) String() string {
	var s []string
	for _, r := range c.roles() {
		s = append(s, string(r)+"="+c[r])
	}
	return strings.Join(s, ",")
}

// eachPair calls f with each trimmed key=value of a comma-separated list
// (none when s is blank), and stops at the first pair that is not one
// (named as shape says), whose key came before, or that f refuses.
func eachPair(s, shape string, f func(k, v string) error) error {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	noun, _, _ := strings.Cut(shape, "=")
	named := map[string]bool{}
	for _, pair := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(pair, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" || v == "" {
			return fmt.Errorf("%q is not %s", strings.TrimSpace(pair), shape)
		}
		if named[k] {
			return fmt.Errorf("%s %s is named twice", noun, k)
		}
		named[k] = true
		if err := f(k, v); err != nil {
			return err
		}
	}
	return nil
}

// Statuses are the values the status column holds for the three states.
type Statuses struct {
	Pending, Delivered, Dead string
}

// DefaultStatuses are the values `migrate` uses.
func DefaultStatuses() Statuses {
	return Statuses{Pending: StatusPending, Delivered: StatusDelivered, Dead: StatusDead}
}

// ParseStatuses reads "pending=NEW,delivered=SENT,dead=FAILED" over
// DefaultStatuses. The three values must differ.
func ParseStatuses(s string) (Statuses, error) {
	st := DefaultStatuses()
	err := eachPair(s, "state=value", func(k, v string) error {
		if !isText(v) {
			return fmt.Errorf("value %q of state %s is not UTF-8 text without NUL bytes", v, k)
		}
		switch k {
		case StatusPending:
			st.Pending = v
		case StatusDelivered:
			st.Delivered = v
		case StatusDead:
			st.Dead = v
		default:
			return fmt.Errorf("unknown state %q (states: pending, delivered, dead)", k)
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	if st.Pending == st.Delivered || st.Pending == st.Dead || st.Delivered == st.Dead {
		return st, errors.New("pending, delivered and dead need three different values")
	}
	return st, nil
}

// isText reports whether s can stand in a statement: the server reads a
// statement as UTF-8 (pgx's client_encoding) up to its first NUL byte.
func isText(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

// Integer reports whether every value is an integer, as an integer status
// column (Django's IntegerChoices) needs.
func (s Statuses) Integer() bool {
	for _, v := range []string{s.Pending, s.Delivered, s.Dead} {
		if _, err := strconv.ParseInt(v, 10, 32); err != nil {
			return false
		}
	}
	return true
}
