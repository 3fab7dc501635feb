package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// Insert is a row the replication stream saw inserted. When the stream
// could decode it whole (Sendable), it is enough to send the row without
// claiming it first (see relay/fresh.go for why that is safe, and when it
// is not done); otherwise only Row.ID is set and the row is claimed by id.
type Insert struct {
	// Row is the row to send; its Attempt is the inserted count plus one,
	// the attempt the send will be.
	Row Row
	// Due is next_attempt_at as inserted. Decode gives it on the server's
	// clock; the stream moves it to this host's clock before handing it
	// on. The sweepers leave the row alone until Due plus their grace.
	Due      time.Time
	Sendable bool
}

// TupleDecoder reads outbox rows from the text form of pgoutput tuples,
// as a replication session with DateStyle ISO and TimeZone UTC sends them.
type TupleDecoder struct {
	s   *Schema
	idx map[Role]int
}

// tupleTime is timestamptz as DateStyle ISO prints it in UTC.
const tupleTime = "2006-01-02 15:04:05.999999-07"

// TupleDecoder makes a decoder for a relation with these columns, in
// order. ok is false when rows of it cannot be sent from the tuple alone:
// a role's column is missing, times are stored without a time zone (their
// meaning depends on the session that reads them), or rows are ordered per
// key (the head of a key is known only to the table). Such rows are
// claimed before they are sent.
func (s *Schema) TupleDecoder(columns []string) (d *TupleDecoder, ok bool) {
	if s.Has(RoleOrderingKey) {
		return nil, false
	}
	d = &TupleDecoder{s: s, idx: make(map[Role]int, len(s.Columns))}
	for r, c := range s.Columns {
		i := slices.Index(columns, c.Name)
		if i < 0 {
			return nil, false
		}
		d.idx[r] = i
	}
	for _, r := range []Role{RoleNextAttemptAt, RoleCreatedAt} {
		if s.Columns[r].Type != "timestamptz" {
			return nil, false
		}
	}
	return d, true
}

// Decode reads a row; value(i) is column i's text and whether it is
// NULL. ok is false for a row that is not a pending, readable row ready to
// send as it stands: those are claimed, which also buries or dead-letters
// what cannot be sent.
func (d *TupleDecoder) Decode(value func(i int) (text []byte, null bool)) (Insert, bool) {
	get := func(r Role) (string, bool) {
		b, null := value(d.idx[r])
		if d.s.Columns[r].Type == "bpchar" {
			// The tuple holds char(n) padded to n; the claim's cast to
			// text drops trailing spaces, and so does this.
			b = bytes.TrimRight(b, " ")
		}
		return string(b), !null
	}
	id, ok1 := get(RoleID)
	eventID, ok2 := get(RoleEventID)
	typ, ok3 := get(RoleEventType)
	status, ok4 := get(RoleStatus)
	attempts, ok5 := get(RoleAttempts)
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || id == "" || eventID == "" || !d.pending(status) {
		return Insert{}, false
	}
	n, err := strconv.Atoi(attempts)
	if err != nil || n < 0 {
		return Insert{}, false
	}
	due, ok := d.time(get(RoleNextAttemptAt))
	if !ok {
		return Insert{}, false
	}
	created, ok := d.time(get(RoleCreatedAt))
	if !ok {
		return Insert{}, false
	}
	payload, present := get(RolePayload)
	if !present {
		payload = "null"
	}
	r := Row{ID: id, EventID: eventID, Type: typ, Payload: d.s.payload(payload), CreatedAt: created, Attempt: n + 1}
	if d.s.Has(RoleTraceparent) {
		r.Traceparent, _ = get(RoleTraceparent)
		if d.s.Has(RoleTracestate) {
			r.Tracestate, _ = get(RoleTracestate)
		}
	}
	return Insert{Row: r, Due: due, Sendable: true}, true
}

func (d *TupleDecoder) pending(status string) bool {
	want := d.s.Statuses.Pending
	if !isInteger(d.s.Columns[RoleStatus].Type) {
		return status == want
	}
	a, err1 := strconv.ParseInt(status, 10, 64)
	b, err2 := strconv.ParseInt(want, 10, 64)
	return err1 == nil && err2 == nil && a == b
}

func (d *TupleDecoder) time(text string, present bool) (time.Time, bool) {
	if !present {
		return time.Time{}, false
	}
	t, err := time.Parse(tupleTime, text)
	return t, err == nil
}

// payload is the stored payload as it is sent: JSON as it is, and text
// that is not JSON as a JSON string of itself.
func (s *Schema) payload(text string) json.RawMessage {
	if s.Columns[RolePayload].Type == "text" && !json.Valid([]byte(text)) {
		q, _ := json.Marshal(text)
		return q
	}
	return json.RawMessage(text)
}

// Lease claims a fresh row that is being sent without a claim, when the
// send outlives its share of the sweepers' grace (relay/fresh.go): the
// attempt is counted and the row leased, as a claim would, but only if
// nobody else claimed it since it was inserted with attempts inserted. ok
// is false when somebody did (or the row is gone or done).
func (s *Store) Lease(ctx context.Context, id string, inserted int, lease time.Duration) (ok bool, err error) {
	tag, err := s.pool.Exec(ctx, s.lease, id, inserted, lease.Seconds())
	if err != nil {
		return false, fmt.Errorf("lease: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}
