package faults

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// faultLog is what the faults did and when, for the checks. Only the
// test's goroutine writes it.
type faultLog struct {
	kills []killNote
	// stops are the rows pending when a second replica was told to stop.
	stops  []map[string]bool
	spans  []span
	counts map[string]int // steps carried out, by what they did
}

// killNote is a relay SIGKILLed at at, and its lane's rows still pending
// right after: the rows whose outcome the dead relay had not written. No
// other sender takes such a row within the moment the snapshot takes: a
// row the dead relay was sending is leased, or left to the stream for its
// grace.
type killNote struct {
	relay   int
	at      time.Time
	pending map[string]bool
}

// span is a time during which a fault was on.
type span struct {
	from, to time.Time
	what     string
}

func (f *faultLog) span(from, to time.Time, what string) {
	f.spans = append(f.spans, span{from, to, what})
}

func (f *faultLog) count(what string) {
	if f.counts == nil {
		f.counts = map[string]int{}
	}
	f.counts[what]++
}

// during reports whether a fault's span overlaps [from, to].
func (f *faultLog) during(from, to time.Time) bool {
	for _, s := range f.spans {
		if !s.to.Before(from) && !s.from.After(to) {
			return true
		}
	}
	return false
}

// unsettled reports whether the row of event id was pending when a relay
// was killed or told to stop: that relay may have claimed it, and a claim
// that sent nothing still counts an attempt.
func (f *faultLog) unsettled(id string) bool {
	for _, k := range f.kills {
		if k.pending[id] {
			return true
		}
	}
	for _, p := range f.stops {
		if p[id] {
			return true
		}
	}
	return false
}

// kill SIGKILLs a relay of l and notes which rows it left pending.
func (sk *soak) kill(l *lane, rp *relayProc) {
	rp.p.Kill()
	k := killNote{relay: rp.n, at: time.Now(), pending: sk.pendingIDs(l)}
	sk.faults.kills = append(sk.faults.kills, k)
	sk.t.Logf("soak: relay %d killed, %d rows of %s pending", rp.n, len(k.pending), l.name)
}

// pendingIDs is the event id of every pending row of l.
func (sk *soak) pendingIDs(l *lane) map[string]bool {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A connection of the pool may have died with a PostgreSQL restart:
	// the next try gets a fresh one.
	for try := 1; ; try++ {
		rows, err := l.d.pool.Query(ctx, `SELECT event_id::text FROM portal_event_outbox WHERE status = 'pending'`)
		var ids []string
		if err == nil {
			ids, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		if err == nil {
			out := make(map[string]bool, len(ids))
			for _, id := range ids {
				out[id] = true
			}
			return out
		}
		if try == 3 {
			sk.t.Fatalf("the pending rows of %s after a kill: %v", l.name, err)
		}
	}
}

// stopReplica stops l's second replica with SIGTERM, if one runs. One
// that outlives its shutdown timeout is killed, and noted as a kill.
func (sk *soak) stopReplica(l *lane) {
	rp := l.replica
	if rp == nil {
		return
	}
	l.replica = nil
	sk.faults.stops = append(sk.faults.stops, sk.pendingIDs(l))
	from := time.Now()
	if code := rp.p.Stop(15 * time.Second); code == -1 {
		sk.faults.kills = append(sk.faults.kills, killNote{relay: rp.n, at: time.Now(), pending: sk.pendingIDs(l)})
	}
	sk.faults.span(from, time.Now(), "replica stopped")
}

// breakerMargin is how long after a runner fault ends the relays' breakers
// may still be open: they probe at least every RELAY_RUNNER_PROBE_MAX
// (2 s in the soak).
const breakerMargin = 5 * time.Second

// runnerFault sets the runner's fault: 503, slow, down (connections
// refused), or ok to end the one on.
func (sk *soak) runnerFault(mode string) {
	switch mode {
	case "ok":
		if sk.runnerDown {
			restartRunner(sk.t, sk.rn)
			sk.runnerDown = false
		}
		sk.j.setMode("")
		sk.faults.span(sk.runnerFrom, time.Now().Add(breakerMargin), "runner fault")
		sk.runnerFrom = time.Time{}
		return
	case "down":
		sk.rn.Stop()
		sk.runnerDown = true
	default:
		sk.j.setMode(mode)
	}
	sk.runnerFrom = time.Now()
}

// calm ends every fault: the runner answers, second replicas stop.
func (sk *soak) calm() {
	if !sk.runnerFrom.IsZero() {
		sk.runnerFault("ok")
	}
	for _, l := range sk.lanes {
		sk.stopReplica(l)
	}
}

// drain waits until every committed row that is due is delivered, or
// limit passes, and reports whether they were.
func (sk *soak) drain(limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for {
		n := 0
		for _, l := range sk.lanes {
			n += l.d.count(sk.t, `status <> 'delivered' AND payload->>'kind' <> 'reschedule'`)
		}
		if n == 0 {
			sk.t.Logf("soak t=%s: drained", sk.since())
			return true
		}
		if time.Now().After(deadline) {
			sk.t.Logf("soak: %d due rows still not delivered %s after the load", n, limit)
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
}
