package store

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
)

// Refused is a row whose write the database refused: a constraint, a
// trigger, a row-level security policy or bad data, as opposed to a
// database that is away. The other rows of its batch were written.
type Refused struct {
	ID       string
	SQLState string
	Message  string // the server's message, one line
}

// refusal returns the SQLSTATE of err when it is the database refusing
// what a statement wrote to some row. Classes that say the server or the
// session is unavailable or busy (a lost connection, a failover to a
// read-only standby, a deadlock, a lock or statement timeout, a shutdown)
// are not: the whole batch is retried later as it is.
func refusal(err error) (*pgconn.PgError, bool) {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || len(pgErr.Code) != 5 {
		return nil, false
	}
	switch pgErr.Code[:2] {
	case "08", // connection exception
		"25", // invalid transaction state: read-only after a failover
		"40", // serialization failure, deadlock
		"53", // insufficient resources
		"55", // lock not available
		"57", // operator intervention: shutdown, statement timeout
		"58", // system error
		"XX": // internal error
		return nil, false
	}
	return pgErr, true
}

// isolate runs write on items. When the database refuses the batch because
// of some rows, it halves the batch until each refused row stands alone:
// every other row is written, and the refused ones come back with the
// reason. Any other error stops it and is returned with the rows refused
// so far; the writes made so far stand, and are guarded (by attempt and
// status) so that the caller may retry the whole batch.
func isolate[T any](ctx context.Context, items []T, id func(T) string, write func(context.Context, []T) error) ([]Refused, error) {
	err := write(ctx, items)
	if err == nil {
		return nil, nil
	}
	pgErr, ok := refusal(err)
	switch {
	case !ok:
		return nil, err
	case len(items) == 1:
		return []Refused{{ID: id(items[0]), SQLState: pgErr.Code, Message: oneLine(pgErr.Message)}}, nil
	}
	mid := len(items) / 2
	left, err := isolate(ctx, items[:mid], id, write)
	if err != nil {
		return left, err
	}
	right, err := isolate(ctx, items[mid:], id, write)
	return append(left, right...), err
}

func oneLine(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '\n' || c == '\r' {
			b[i] = ' '
		}
	}
	return string(b)
}
