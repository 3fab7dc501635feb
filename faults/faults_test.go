package faults

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

const concurrency = 8

// Under steady inserts the relay is SIGKILLed at random moments and
// restarted. Every event is delivered; a duplicate can only come from a
// kill between a POST and its outcome write: each is an event accepted
// first from a relay that was then killed, then from a later one, and a
// killed relay leaves at most window(RELAY_CONCURRENCY) of them.
func TestRelayKilled(t *testing.T) { relayKilled(t, unordered) }

func relayKilled(t *testing.T, m mode) {
	d := m.db(t, pgtest.NewDB(t))
	rn := relaytest.NewRunner(t)
	s := newSenders(rn, nil)
	env := m.env(d, rn, "RELAY_CONCURRENCY="+strconv.Itoa(concurrency))
	start := func() (*relaytest.Process, int) {
		tag, n := s.tag()
		return startRelay(t, append(env, tag)), n
	}
	in := m.inserter(t, d, 200, 4)
	kills := scale(3, 20)
	p, n := start()
	for range kills {
		// A random moment: this is the fault, not a wait for a condition.
		time.Sleep(time.Duration(100+rand.IntN(700)) * time.Millisecond)
		s.kill(n)
		p.Kill()
		p, n = start()
	}
	in.stop()
	r := m.verify(t, d, rn, 90*time.Second)
	for _, o := range s.outsideWindow() {
		t.Errorf("outside the crash window: %s", o)
	}
	left := s.resentAfter()
	for relay, n := range left {
		if n > window(concurrency) {
			t.Errorf("relay %d left %d duplicates at its death, more than its crash window holds (%d)", relay, n, window(concurrency))
		}
	}
	t.Logf("duplicates left by each killed relay: %v (bound %d each)", left, window(concurrency))
	record(t, m.fault("relay killed"), r, map[string]string{"kills": strconv.Itoa(kills)})
}

// window is the most events a relay of the given RELAY_CONCURRENCY can
// have sent without their outcome committed, so the most duplicates its
// death can leave: POSTs under way or answered and waiting to queue their
// outcome (one a worker), outcomes queued for the recorder (as many), and
// the batch it is writing: up to lingerBelow outcomes gathered, plus what
// the queue and the blocked workers held then (2 × concurrency). 4 ×
// concurrency was the bound while the recorder gathered for 2 ms; with
// 50 ms (a tenth of the statements per event at 500/s), one killed ordered
// relay left 32 at concurrency 8, and with 64 outcomes gathered at most,
// 20 kills left 145 where they had left 27.
func window(concurrency int) int { return 4*concurrency + lingerBelow }

// lingerBelow is the relay's (relay/recorder.go): a batch of outcomes this
// large is written without waiting for more.
const lingerBelow = 16

// Postgres is restarted with -m immediate (a crash) under load, twice; the
// relay recovers on its own, pool and stream.
func TestPostgresRestarted(t *testing.T) { postgresRestarted(t, unordered) }

func postgresRestarted(t *testing.T, m mode) {
	// The harness runs with synchronous_commit off for speed; a crash
	// then loses acknowledged commits, outcomes among them, and the lost
	// "delivered" rows are sent again. Production runs with it on.
	c := pgtest.StartT(t, pgtest.WithSetting("synchronous_commit", "on"))
	d := m.db(t, c.URL("postgres"))
	rn := relaytest.NewRunner(t)
	in := m.inserter(t, d, 200, 4)
	p := startRelay(t, m.env(d, rn))
	restarts := 2
	for range restarts {
		pgtest.WaitFor(t, 30*time.Second, "deliveries before the restart", func() bool { return len(rn.Accepted()) > 0 })
		time.Sleep(time.Second) // load runs for a while: the fault's timing
		if err := c.Restart("immediate"); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second)
	in.stop()
	r := m.verify(t, d, rn, 90*time.Second)
	// No relay dies, so there is no crash window: an outcome write in
	// flight at the crash is retried once the server is back, and no
	// sweeper, this relay's own included, may send the row again
	// meanwhile. With synchronous_commit on, no acknowledged write is
	// lost either.
	if r.Duplicates != 0 {
		t.Errorf("%d duplicates after %d crashes of Postgres with the relay alive, want 0", r.Duplicates, restarts)
	}
	select {
	case <-p.Done():
		t.Fatalf("the relay exited during the restarts: %v", p.Err())
	default:
	}
	record(t, m.fault("postgres restarted"), r, map[string]string{"restarts": strconv.Itoa(restarts)})
}

// Three relays stream and sweep one table: no event is sent twice.
func TestThreeReplicas(t *testing.T) { threeReplicas(t, unordered) }

func threeReplicas(t *testing.T, m mode) {
	d := m.db(t, pgtest.NewDB(t))
	rn := relaytest.NewRunner(t)
	s := newSenders(rn, nil)
	for range 3 {
		tag, _ := s.tag()
		startRelay(t, m.env(d, rn, "RELAY_SWEEP_INTERVAL=200ms", tag))
	}
	events := scale(1000, 10000)
	in := m.inserter(t, d, 1000, 4)
	pgtest.WaitFor(t, 5*time.Minute, "the inserts", func() bool { return in.count() >= events })
	in.stop()
	r := m.verify(t, d, rn, 2*time.Minute)
	if r.Duplicates != 0 {
		t.Errorf("%d duplicates with three replicas, want 0", r.Duplicates)
	}
	for _, o := range s.outsideWindow() {
		t.Errorf("outside the crash window: %s", o)
	}
	record(t, m.fault("three replicas"), r, nil)
}

// SIGTERM under load: in-flight deliveries finish or stay pending, the
// relay exits 0 within its shutdown deadline, and nothing is lost after a
// restart.
func TestSIGTERM(t *testing.T) {
	d, rn := fresh(t)
	// Slow answers keep POSTs in flight at the moment of the signal.
	rn.SetAnswer(func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
		time.Sleep(time.Duration(rand.IntN(200)) * time.Millisecond)
		return true
	})
	env := relayEnv(d, rn)
	in := startInserter(t, d, 300, 4)
	terms := scale(2, 5)
	for range terms {
		// Deliveries by this relay, not the one before: until it has
		// delivered, its signal handler may not be installed yet.
		before := len(rn.Accepted())
		p := startRelay(t, env)
		pgtest.WaitFor(t, 30*time.Second, "deliveries", func() bool { return len(rn.Accepted()) > before })
		time.Sleep(500 * time.Millisecond)
		if code := p.Stop(10 * time.Second); code != 0 {
			t.Fatalf("exit %d after SIGTERM, want 0 within the deadline", code)
		}
	}
	in.stop()
	startRelay(t, env)
	r := verify(t, d, rn, 60*time.Second)
	if r.Duplicates != 0 {
		t.Errorf("%d duplicates after clean shutdowns, want 0", r.Duplicates)
	}
	record(t, "SIGTERM under load", r, map[string]string{"terms": strconv.Itoa(terms)})
}
