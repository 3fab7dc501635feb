package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Claim is what a claim took: rows to send, and rows that will not be
// sent (dead: buried by the claim, or unreadable) or could not be claimed
// at all (refused by the database).
type Claim struct {
	Rows    []Row
	Dead    []Result
	Refused []Refused
	// Seen are ids an ordered ClaimIDs found but did not claim: their
	// key's head was claimed, is in flight or waits for a retry.
	Seen []string
}

// Len is how many rows the claim took or tried.
func (c Claim) Len() int { return len(c.Rows) + len(c.Dead) + len(c.Refused) }

// ClaimIDs claims those of ids that are pending and due, for lease; with
// rows ordered per key, the head of each id's key instead (ordering.go).
// maxAttempts buries rows that have used every attempt; they come back in
// Dead and must not be sent, as do rows that cannot be read. Ids whose
// claim the database refuses come back in Refused; the others are claimed.
// With an error, the claim holds what the statements before it took (a
// claim halved around refused rows commits each half on its own): the
// caller must send or release those rows all the same.
func (s *Store) ClaimIDs(ctx context.Context, ids []string, lease time.Duration, maxAttempts int) (Claim, error) {
	var c Claim
	refused, err := isolate(ctx, ids, func(id string) string { return id }, func(ctx context.Context, ids []string) error {
		return s.claim(ctx, &c, s.claimIDs, lease, maxAttempts, len(ids), ids, []string{})
	})
	c.Refused = refused
	return c, err
}

// ClaimDue claims up to limit pending rows that are due, but none of skip
// (rows the database refused to write a moment ago). Rows never tried are
// taken only once they are older than grace, which leaves fresh rows to
// the replication stream while it is healthy; retries are taken when due.
// When the database refuses the claim, the due rows are claimed by id so
// that the refused ones are found and the others go on.
func (s *Store) ClaimDue(ctx context.Context, limit int, grace, lease time.Duration, maxAttempts int, skip []string) (Claim, error) {
	if skip == nil {
		skip = []string{}
	}
	var c Claim
	err := s.claim(ctx, &c, s.claimDue, lease, maxAttempts, limit, grace.Seconds(), skip)
	if _, ok := refusal(err); !ok {
		return c, err
	}
	rows, err := s.pool.Query(ctx, s.dueIDs, limit, grace.Seconds(), skip)
	if err != nil {
		return c, fmt.Errorf("claim: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return c, fmt.Errorf("claim: %w", err)
	}
	return s.ClaimIDs(ctx, ids, lease, maxAttempts)
}

func (s *Store) claim(ctx context.Context, c *Claim, sql string, lease time.Duration, maxAttempts, limit int, arg, skip any) error {
	rows, finish, err := s.claimRows(ctx, sql, lease.Seconds(), maxAttempts, limit, arg, skip)
	if err != nil {
		return fmt.Errorf("claim: %w", err)
	}
	defer func() { _ = finish() }()
	var got Claim
	for rows.Next() {
		var cr claimedRow
		if err := rows.Scan(s.scanInto(&cr, sql)...); err != nil {
			return fmt.Errorf("claim: %w", err)
		}
		if cr.seen {
			got.Seen = append(got.Seen, cr.id)
			continue
		}
		r, res := s.schema.read(cr)
		if res != nil {
			got.Dead = append(got.Dead, *res)
			continue
		}
		got.Rows = append(got.Rows, r)
	}
	if err := finish(); err != nil {
		return fmt.Errorf("claim: %w", err)
	}
	// Only a statement that succeeded claimed anything: its transaction
	// is the one that committed.
	c.Rows, c.Dead, c.Seen = append(c.Rows, got.Rows...), append(c.Dead, got.Dead...), append(c.Seen, got.Seen...)
	return nil
}

// claimedRow is a row as the claim returns it, before it is checked.
type claimedRow struct {
	id                 string
	eventID, eventType *string
	payload            string
	createdAt          time.Time
	attempt            int
	buried             bool
	key                *string
	seen               bool // found by an ordered claim by id, not claimed
	// trace context, read only when its roles are mapped
	traceparent, tracestate *string
}

// read turns a claimed row into one to send, or into a dead result when it
// was buried by the claim or cannot be sent: a row without an event id or
// type is the application's mistake, and sending it again will not help.
func (s *Schema) read(c claimedRow) (Row, *Result) {
	res := &Result{ID: c.id, Attempt: c.attempt, Status: StatusDead, Key: c.key}
	switch {
	case c.buried:
		res.Kind = KindBuried
		return Row{}, res
	case c.eventID == nil || *c.eventID == "":
		res.Error = fmt.Sprintf("cannot be sent: %s is empty", s.Columns[RoleEventID].Name)
		return Row{}, res
	case c.eventType == nil:
		res.Error = fmt.Sprintf("cannot be sent: %s is NULL", s.Columns[RoleEventType].Name)
		return Row{}, res
	}
	r := Row{ID: c.id, EventID: *c.eventID, Type: *c.eventType, Payload: s.payload(c.payload),
		CreatedAt: c.createdAt, Attempt: c.attempt, Key: c.key}
	if c.traceparent != nil {
		r.Traceparent = *c.traceparent
		if c.tracestate != nil {
			r.Tracestate = *c.tracestate
		}
	}
	return r, nil
}

// NextDue is how long until the earliest pending row is due for the
// sweeper (negative when one is overdue); rows never tried count from their
// next_attempt_at plus grace. ok is false when nothing is pending.
func (s *Store) NextDue(ctx context.Context, grace time.Duration) (d time.Duration, ok bool, err error) {
	var secs *float64
	if err := s.pool.QueryRow(ctx, s.nextDue, grace.Seconds()).Scan(&secs); err != nil {
		return 0, false, fmt.Errorf("next due: %w", err)
	}
	if secs == nil {
		return 0, false, nil
	}
	return time.Duration(*secs * float64(time.Second)), true, nil
}
