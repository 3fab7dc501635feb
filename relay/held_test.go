package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/store"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/sweeper"
)

// flow is a Deliverer and a sweeper running on pool, fed by a stand-in
// for the replication stream that inserts through admin.
type flow struct {
	admin *pgxpool.Pool
	d     *relay.Deliverer
	rn    *runner
	// maxHeld is the most outcomes seen held after each event.
	maxHeld int
}

func startFlow(t *testing.T, admin, pool *pgxpool.Pool, maxHeld int) *flow {
	t.Helper()
	rn := newRunner(t, ok)
	st := store.New(pool, store.DefaultSchema(table))
	log := quiet
	d := relay.New(relay.Config{
		RunnerURL: rn.URL(), HTTPTimeout: 500 * time.Millisecond, Concurrency: 4, MaxAttempts: 25,
		Backoff: relay.Backoff{Base: 50 * time.Millisecond, Max: time.Second}, ShutdownGrace: time.Second,
		FreshGrace: time.Second,
	}, st, log, nil)
	relay.SetMaxHeld(d, maxHeld)
	sw := sweeper.New(sweeper.Config{Interval: 200 * time.Millisecond, BatchSize: 50,
		Grace: time.Second}, d, st, log)
	ctx, cancel := context.WithCancel(context.Background())
	var running sync.WaitGroup
	running.Go(func() { _ = d.Run(ctx) })
	running.Go(func() { _ = sw.Run(ctx) })
	t.Cleanup(func() { cancel(); running.Wait() })
	return &flow{admin: admin, d: d, rn: rn}
}

// stream inserts n events and hands each on as fresh at once, as the
// replication stream does after its commit.
func (f *flow) stream(t *testing.T, n int) {
	t.Helper()
	ctx := context.Background()
	for range n {
		in := store.Insert{Sendable: true}
		r := &in.Row
		if err := f.admin.QueryRow(ctx, `INSERT INTO portal_event_outbox (event_type, payload) VALUES ('t', '{}')
			RETURNING id::text, event_id::text, event_type, payload::text, created_at, attempts + 1, next_attempt_at`).
			Scan(&r.ID, &r.EventID, &r.Type, &r.Payload, &r.CreatedAt, &r.Attempt, &in.Due); err != nil {
			t.Fatal(err)
		}
		if _, err := f.d.DeliverInserts(ctx, []store.Insert{in}); err != nil {
			t.Fatal(err)
		}
		f.maxHeld = max(f.maxHeld, relay.HeldOutcomes(f.d))
	}
}

func (f *flow) undelivered(t *testing.T) int {
	t.Helper()
	var n int
	if err := f.admin.QueryRow(context.Background(), `SELECT count(*) FROM portal_event_outbox WHERE status <> 'delivered'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// received counts the requests the runner got for each event of the table,
// and the requests for events it does not hold.
func (f *flow) received(t *testing.T) (byEvent map[string]int, strangers int) {
	t.Helper()
	got := map[string]int{}
	for _, r := range f.rn.requests() {
		var body struct{ ID string }
		if err := json.Unmarshal(r.Body, &body); err != nil {
			t.Fatal(err)
		}
		got[body.ID]++
	}
	rows, err := f.admin.Query(context.Background(), `SELECT event_id::text FROM portal_event_outbox`)
	if err != nil {
		t.Fatal(err)
	}
	byEvent = map[string]int{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		byEvent[id] = got[id]
		delete(got, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return byEvent, len(got)
}

// While the relay's role may not UPDATE the table and events keep coming
// from the stream, the relay does not halve its statements down to single
// rows over and over: it backs off as a whole, and holds no more outcomes
// than its cap. Once the grant is back every event is delivered, once.
func TestRevokedUpdateBacksOff(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	admin, role := pgtest.NewDBWithRole(t)
	if _, err := store.Migrate(ctx, admin, store.DefaultSchema(table), ""); err != nil {
		t.Fatal(err)
	}
	grant := func(sql string) {
		t.Helper()
		if _, err := admin.Exec(ctx, fmt.Sprintf(sql, role.Ident)); err != nil {
			t.Fatal(err)
		}
	}
	grant("GRANT SELECT, UPDATE ON portal_event_outbox TO %s")
	pool, sent := role.Pool(t, store.Configure)
	const maxHeld = 64
	f := startFlow(t, admin, pool, maxHeld)
	f.stream(t, 100)
	pgtest.WaitFor(t, 30*time.Second, "the first events to be delivered", func() bool { return f.undelivered(t) == 0 })

	grant("REVOKE UPDATE ON portal_event_outbox FROM %s")
	before := sent.Count()
	const during = 300
	f.stream(t, during)
	statements := sent.Count() - before
	t.Logf("while UPDATE was revoked: %d statements for %d events, at most %d outcomes held", statements, during, f.maxHeld)
	if statements > 100 {
		t.Errorf("%d statements for %d events while UPDATE was revoked, want at most 100", statements, during)
	}
	if f.maxHeld > maxHeld {
		t.Errorf("%d outcomes held, want at most the cap, %d", f.maxHeld, maxHeld)
	}

	grant("GRANT UPDATE ON portal_event_outbox TO %s")
	pgtest.WaitFor(t, 90*time.Second, "every event to be delivered after the grant", func() bool { return f.undelivered(t) == 0 })
	got, strangers := f.received(t)
	for id, n := range got {
		if n != 1 {
			t.Errorf("event %s was received %d times, want once", id, n)
		}
	}
	if len(got) != 100+during || strangers > 0 {
		t.Errorf("%d events in the table, %d requests for others; want %d and none", len(got), strangers, 100+during)
	}
}

// A trigger that refuses the outcome of every row, one by one, while
// events keep coming: the outcomes held stay within the cap, those past it
// are dropped, and once the trigger goes every event is delivered (the
// dropped ones sent again: the table kept their rows).
func TestHeldOutcomesAreCapped(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	if _, err := pool.Exec(context.Background(), `CREATE FUNCTION refuse_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'no outcome for %', NEW.id; END $$;
CREATE TRIGGER refuse_outcome BEFORE UPDATE ON portal_event_outbox FOR EACH ROW
	WHEN (NEW.status <> 'pending') EXECUTE FUNCTION refuse_outcome()`); err != nil {
		t.Fatal(err)
	}
	const maxHeld, events = 8, 40
	f := startFlow(t, pool, pool, maxHeld)
	f.stream(t, events)
	pgtest.WaitFor(t, 30*time.Second, "every event to be sent once", func() bool {
		f.maxHeld = max(f.maxHeld, relay.HeldOutcomes(f.d))
		got, _ := f.received(t)
		for _, n := range got {
			if n == 0 {
				return false
			}
		}
		return len(got) == events
	})
	t.Logf("at most %d outcomes held", f.maxHeld)
	if f.maxHeld > maxHeld {
		t.Errorf("%d outcomes held, want at most the cap, %d", f.maxHeld, maxHeld)
	}

	if _, err := pool.Exec(context.Background(), `DROP TRIGGER refuse_outcome ON portal_event_outbox`); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, 90*time.Second, "every event to be delivered after the trigger went", func() bool { return f.undelivered(t) == 0 })
	if got, strangers := f.received(t); len(got) != events || strangers > 0 {
		t.Errorf("%d events in the table, %d requests for others; want %d and none", len(got), strangers, events)
	}
}
