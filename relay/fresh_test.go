package relay_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/store"
	"github.com/outbox-relay/outbox-relay/relay"
)

// fresh is the row as the stream hands it on after decoding its INSERT.
func fresh(t *testing.T, b *bundle, id string) store.Insert {
	t.Helper()
	in := store.Insert{Sendable: true}
	r := &in.Row
	err := b.pool.QueryRow(context.Background(), `SELECT id::text, event_id::text, event_type, payload::text, created_at, attempts + 1, next_attempt_at
		FROM portal_event_outbox WHERE id = $1::bigint`, id).Scan(&r.ID, &r.EventID, &r.Type, &r.Payload, &r.CreatedAt, &r.Attempt, &in.Due)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func (b *bundle) deliverFresh(t *testing.T, ins ...store.Insert) {
	t.Helper()
	missing, err := b.d.DeliverInserts(context.Background(), ins)
	if err != nil || len(missing) > 0 {
		t.Fatalf("DeliverInserts = missing %v, %v", missing, err)
	}
}

// during runs check on every request while the runner holds it.
func during(check func()) func(http.ResponseWriter, *http.Request, []byte) {
	return func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		check()
		w.WriteHeader(http.StatusNoContent)
	}
}

// A fresh row is POSTed with nothing written before: one outcome write
// records it and counts the attempt.
func TestFreshRowIsSentWithoutAClaim(t *testing.T) {
	t.Parallel()
	seen := make(chan rowState, 1) // the row during the one POST
	var b *bundle
	b = setup(t, during(func() {
		select {
		case seen <- state(t, b.pool, b.lastID):
		default:
			t.Error("the fresh row was POSTed more than once")
		}
	}), func(c *relay.Config) { c.FreshGrace = 10 * time.Second })
	b.lastID = insert(t, b.pool, "file.finalized", `{"file": 42}`)
	b.deliverFresh(t, fresh(t, b, b.lastID))
	s := settled(t, b, b.lastID, 1)
	if s.Status != store.StatusDelivered || s.Delivered == nil {
		t.Fatalf("row after a 204: %+v", s)
	}
	select {
	case during := <-seen:
		if during.Attempts != 0 || during.Status != store.StatusPending {
			t.Fatalf("during the POST the row was %+v; want it untouched: pending, 0 attempts", during)
		}
	default:
		t.Fatal("the row is delivered without a POST")
	}
	if reqs := b.runner.requests(); len(reqs) != 1 || !strings.Contains(string(reqs[0].Body), `"file": 42`) {
		t.Errorf("runner got %d requests: %+v", len(reqs), reqs)
	}
}

// A send that outlives half the grace claims its row while it runs, so
// that no sweeper takes it; its outcome is then written as a claimed
// row's.
func TestFreshSendThatRunsLongIsClaimed(t *testing.T) {
	t.Parallel()
	var b *bundle
	var leasedDuring rowState
	b = setup(t, during(func() {
		pgtest.WaitFor(t, 10*time.Second, "the lease while the POST runs", func() bool {
			leasedDuring = state(t, b.pool, b.lastID)
			return leasedDuring.Attempts == 1
		})
	}), func(c *relay.Config) { c.FreshGrace = 400 * time.Millisecond })
	b.lastID = insert(t, b.pool, "file.finalized", `{}`)
	b.claimedAt = time.Now()
	b.deliverFresh(t, fresh(t, b, b.lastID))
	s := settled(t, b, b.lastID, 1)
	if s.Status != store.StatusDelivered {
		t.Fatalf("row after a 204: %+v", s)
	}
	if time.Until(leasedDuring.Next) < time.Second {
		t.Errorf("the lease written during the POST ends at %s: want it pushed past the attempt", leasedDuring.Next)
	}
	// A sweep that takes fresh rows (woken, or a probe) honours the grace
	// while a fresh send may be in flight: checked by the next test.
}

// A fresh send's outcome never overwrites another claimer's: the row
// claimed elsewhere during the POST keeps that claim. Meanwhile no sweep of
// this process takes the fresh row, not even one that takes fresh rows.
func TestFreshOutcomeYieldsToAnotherClaim(t *testing.T) {
	t.Parallel()
	var b *bundle
	var sweptDuring int
	var claimedElsewhere store.Claim
	var first store.Insert
	handled := make(chan struct{})
	b = setup(t, func(w http.ResponseWriter, _ *http.Request, body []byte) {
		if strings.Contains(string(body), first.Row.EventID) {
			defer close(handled)
			n, err := b.d.DeliverDue(context.Background(), 10, 0)
			if err != nil {
				t.Error(err)
			}
			sweptDuring = n
			if claimedElsewhere, err = b.store.ClaimIDs(context.Background(), []string{first.Row.ID}, time.Hour, 25); err != nil {
				t.Error(err)
			}
		}
		w.WriteHeader(http.StatusNoContent)
	}, func(c *relay.Config) {
		c.FreshGrace = 10 * time.Second
		// One POST at a time: the later row's starts after the first's
		// answer is in, and outcomes are written in order, so once the
		// later row's is, the first's was dealt with.
		c.Concurrency = 1
	})
	first = fresh(t, b, insert(t, b.pool, "file.finalized", `{}`))
	b.deliverFresh(t, first)
	select {
	case <-handled:
	case <-time.After(10 * time.Second):
		t.Fatal("no POST of the first row")
	}
	later := insert(t, b.pool, "file.finalized", `{}`)
	b.deliverFresh(t, fresh(t, b, later))
	pgtest.WaitFor(t, 10*time.Second, "the later row's outcome", func() bool {
		return state(t, b.pool, later).Status == store.StatusDelivered
	})
	if sweptDuring != 0 {
		t.Errorf("a sweep without grace claimed %d rows while a fresh send ran", sweptDuring)
	}
	if len(claimedElsewhere.Rows) != 1 {
		t.Fatalf("the other claim took %+v", claimedElsewhere)
	}
	s := state(t, b.pool, first.Row.ID)
	if s.Status != store.StatusPending || s.Attempts != 1 || time.Until(s.Next) < 50*time.Minute {
		t.Errorf("row claimed elsewhere is %+v after the fresh send's outcome; want that claim intact", s)
	}
}

// Fresh sends whose timer claimed their row while the relay stops give
// the lease back, attempt uncounted: the one in flight (cut at the end of
// the grace), the one queued, and the one waiting for room in the queue.
func TestStopGivesBackLeasesOfFreshSends(t *testing.T) {
	t.Parallel()
	b := &bundle{pool: newPool(t)}
	entered := make(chan struct{}, 1)
	rn := newRunner(t, func(w http.ResponseWriter, r *http.Request, _ []byte) {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-r.Context().Done()
	})
	// One worker and a queue of one; the timers claim a fresh row 2 s
	// after it is due.
	d := relay.New(relay.Config{
		RunnerURL: rn.URL(), HTTPTimeout: time.Minute, Concurrency: 1, MaxAttempts: 25,
		Backoff: relay.Backoff{Base: time.Hour, Max: time.Hour}, ShutdownGrace: 100 * time.Millisecond,
		FreshGrace: 4 * time.Second,
	}, store.New(b.pool, store.DefaultSchema(table)), quiet, nil)
	_, cancel, done := runStoppable(t, d)

	send := func(id string) error {
		_, err := d.DeliverInserts(context.Background(), []store.Insert{fresh(t, b, id)})
		return err
	}
	inFlight := insert(t, b.pool, "t", `{}`)
	if err := send(inFlight); err != nil {
		t.Fatal(err)
	}
	<-entered
	queued := insert(t, b.pool, "t", `{}`)
	if err := send(queued); err != nil {
		t.Fatal(err)
	}
	waiting := insert(t, b.pool, "t", `{}`)
	blocked := make(chan error, 1)
	go func() { blocked <- send(waiting) }()
	ids := []string{inFlight, queued, waiting}
	pgtest.WaitFor(t, 20*time.Second, "the timers to claim every row", func() bool {
		for _, id := range ids {
			if state(t, b.pool, id).Attempts != 1 {
				return false
			}
		}
		return true
	})

	cancel()
	if err := <-blocked; err == nil {
		t.Error("the send waiting for room in the queue was queued after the stop")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for name, id := range map[string]string{"in flight": inFlight, "queued": queued, "waiting for the queue": waiting} {
		if s := state(t, b.pool, id); s.Status != store.StatusPending || s.Attempts != 0 || s.Next.After(time.Now()) {
			t.Errorf("row %s after the stop: %+v, want pending, due, attempts 0", name, s)
		}
	}
}
