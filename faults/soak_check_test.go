package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

// evidence is what the checks judge: the tables as they ended, what the
// runner answered, and what the faults did.
type evidence struct {
	rows   map[string]soakRow // by event id, every lane's
	keyed  []relaytest.KeyedRow
	got    map[string][]request
	firsts []string // first acceptances, in order
	faults *faultLog
}

// soakRow is a committed row as the table holds it after the drain.
type soakRow struct {
	status   string
	attempts int
	payload  json.RawMessage
	p        soakPayload
	created  time.Time
}

func (sk *soak) evidence() *evidence {
	ev := &evidence{rows: map[string]soakRow{}, got: sk.j.requests(), firsts: sk.rn.FirstAcceptances(), faults: &sk.faults}
	for _, l := range sk.lanes {
		rows, err := l.d.pool.Query(context.Background(), `SELECT event_id::text, coalesce(entity, ''), status, attempts, payload, created_at
			FROM portal_event_outbox ORDER BY `+pgx.Identifier{l.order}.Sanitize())
		if err != nil {
			sk.t.Fatal(err)
		}
		for rows.Next() {
			var id, key string
			var r soakRow
			if err := rows.Scan(&id, &key, &r.status, &r.attempts, &r.payload, &r.created); err != nil {
				sk.t.Fatal(err)
			}
			_ = json.Unmarshal(r.payload, &r.p)
			ev.rows[id] = r
			if l.ordered {
				ev.keyed = append(ev.keyed, relaytest.KeyedRow{EventID: id, Key: key, Dead: r.status == "dead"})
			}
		}
		if err := rows.Err(); err != nil {
			sk.t.Fatal(err)
		}
	}
	return ev
}

func acceptances(qs []request) []request {
	var out []request
	for _, q := range qs {
		if q.accepted() {
			out = append(out, q)
		}
	}
	return out
}

// lost: committed rows that are due (not rescheduled) that the runner
// never accepted.
func (ev *evidence) lost() []string {
	var out []string
	for id, r := range ev.rows {
		if r.p.Kind != "reschedule" && len(acceptances(ev.got[id])) == 0 {
			out = append(out, fmt.Sprintf("event %s (%s) status %s", id, r.p.Kind, r.status))
		}
	}
	return out
}

// duplicates counts the extra acceptances of events, and describes those
// no kill explains. An acceptance after the first is explained when the
// relay of the acceptance before it was SIGKILLed, the row was still
// pending right after that kill (the dead relay had not written its
// outcome), and it came after the kill from another relay.
func (ev *evidence) duplicates() (n int, unexplained []string) {
	for id, qs := range ev.got {
		acc := acceptances(qs)
		for i := 1; i < len(acc); i++ {
			n++
			if !ev.explained(id, acc[i-1], acc[i]) {
				unexplained = append(unexplained, fmt.Sprintf("event %s (%s) accepted %s", id, acc[0].kind, describe(acc)))
			}
		}
	}
	return n, unexplained
}

func (ev *evidence) explained(id string, prev, next request) bool {
	for _, k := range ev.faults.kills {
		if k.relay == prev.relay && k.pending[id] && next.at.After(k.at) && next.relay != prev.relay {
			return true
		}
	}
	return false
}

// describe says which relay sent each request, when, and the answer.
func describe(qs []request) string {
	var out []string
	for _, q := range qs {
		out = append(out, fmt.Sprintf("%d from relay %d at %s", q.code, q.relay, q.at.Format(time.StampMicro)))
	}
	return strings.Join(out, ", ")
}

// stale: events sent with a payload other than the committed one.
func (ev *evidence) stale() []string {
	var out []string
	for id, qs := range ev.got {
		r, ok := ev.rows[id]
		if !ok {
			continue
		}
		for _, q := range qs {
			if !sameJSON(q.data, r.payload) {
				out = append(out, fmt.Sprintf("event %s (%s) sent %s, committed %s", id, r.p.Kind, q.data, r.payload))
				break
			}
		}
	}
	return out
}

func sameJSON(a, b json.RawMessage) bool {
	var x, y any
	return json.Unmarshal(a, &x) == nil && json.Unmarshal(b, &y) == nil && reflect.DeepEqual(x, y)
}

// forbidden: events sent that never should have been: deleted by their
// own transaction, not due for a day, or not in any table at all.
func (ev *evidence) forbidden() (deleted, early, unknown []string) {
	for id, qs := range ev.got {
		r, ok := ev.rows[id]
		switch {
		case qs[0].kind == "delete":
			deleted = append(deleted, fmt.Sprintf("event %s %s: %s", id, qs[0].data, describe(qs)))
		case ok && r.p.Kind == "reschedule":
			early = append(early, fmt.Sprintf("event %s %s: %s", id, qs[0].data, describe(qs)))
		case !ok:
			unknown = append(unknown, fmt.Sprintf("event %s %s: %s", id, qs[0].data, describe(qs)))
		}
	}
	return deleted, early, unknown
}

// attempts: a delivered row's attempts is the count it was inserted with
// plus the requests the runner answered for it (2xx and a flaky row's
// 503s), for each row the faults left alone: not pending when a relay
// was killed or told to stop, and no PostgreSQL restart, replica stop or
// runner fault (with the time the breakers take to close after it)
// between a second before its insert and a second after its last answer.
// Under a fault the count may rightly differ: a claim a kill cuts short
// counts with no request, a breaker open counts none.
func (ev *evidence) attempts() (checked int, wrong []string) {
	for id, r := range ev.rows {
		qs := ev.got[id]
		if r.status != "delivered" || len(qs) == 0 || ev.faults.unsettled(id) ||
			ev.faults.during(r.created.Add(-time.Second), qs[len(qs)-1].at.Add(time.Second)) {
			continue
		}
		checked++
		if want := r.p.A0 + len(qs); r.attempts != want {
			wrong = append(wrong, fmt.Sprintf("event %s (%s) attempts %d, want %d (inserted with %d; answered %s)",
				id, r.p.Kind, r.attempts, want, r.p.A0, describe(qs)))
		}
	}
	return checked, wrong
}

// firstFew is the first n of found, sorted, for a failure message.
func firstFew(found []string, n int) string {
	s := slices.Clone(found)
	slices.Sort(s)
	return strings.Join(s[:min(n, len(s))], "; ")
}
