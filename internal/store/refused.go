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

// StatementRefused is the database refusing a statement whatever rows it
// writes: a write of no rows is refused as the batch was (the relay's role
// lost a privilege on the table, a statement-level trigger, a column the
// statement names is gone). No row is to blame, so the batch is not
// halved: that would only repeat the refusal about twice per row.
type StatementRefused struct {
	SQLState string
	Message  string // the server's message, one line
}

func (e *StatementRefused) Error() string {
	return "the database refuses the statement whatever its rows (SQLSTATE " + e.SQLState + "): " + e.Message
}

// isolate runs write on items. When the database refuses the batch because
// of some rows, it halves the batch until each refused row stands alone:
// every other row is written, and the refused ones come back with the
// reason. A refusal that a write of no rows meets too is the statement's,
// not a row's: it comes back as a *StatementRefused, nothing written. Any
// other error stops it and is returned with the rows refused so far; the
// writes made so far stand, and are guarded (by attempt and status) so
// that the caller may retry the whole batch.
func isolate[T any](ctx context.Context, items []T, id func(T) string, write func(context.Context, []T) error) ([]Refused, error) {
	err := write(ctx, items)
	if err == nil {
		return nil, nil
	}
	pgErr, ok := refusal(err)
	if !ok {
		return nil, err
	}
	if len(items) > 0 {
		if err = write(ctx, items[:0]); err == nil {
			return halve(ctx, items, id, write, pgErr)
		}
		if pgErr, ok = refusal(err); !ok {
			return nil, err
		}
	}
	return nil, &StatementRefused{SQLState: pgErr.Code, Message: oneLine(pgErr.Message)}
}

// halve writes the halves of items, which the database refused with
// pgErr, each on its own, down to single rows.
func halve[T any](ctx context.Context, items []T, id func(T) string, write func(context.Context, []T) error, pgErr *pgconn.PgError) ([]Refused, error) {
	if len(items) == 1 {
		return []Refused{{ID: id(items[0]), SQLState: pgErr.Code, Message: oneLine(pgErr.Message)}}, nil
	}
	var refused []Refused
	for _, half := range [][]T{items[:len(items)/2], items[len(items)/2:]} {
		err := write(ctx, half)
		if err == nil {
			continue
		}
		p, ok := refusal(err)
		if !ok {
			return refused, err
		}
		r, err := halve(ctx, half, id, write, p)
		refused = append(refused, r...)
		if err != nil {
			return refused, err
		}
	}
	return refused, nil
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
