package faults

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// step is one moment of the fault plan.
type step struct {
	at   time.Duration // from the start of the load
	do   string        // kill, replica, replica-stop, runner, postgres
	lane int
	// arg is, for kill: main or replica (the replica if one runs);
	// replica: its settings over the lane's; runner: 503, slow, down or
	// ok (the fault ends); postgres: pg_ctl restart's mode.
	arg string
}

func (s step) String() string {
	return fmt.Sprintf("%s %s lane=%d %q", s.at.Round(10*time.Millisecond), s.do, s.lane, s.arg)
}

// replicaSettings are the second replicas' settings: sweep-only, or a
// narrow one that sweeps often, or one that wants the stream too.
var replicaSettings = []string{
	"RELAY_CDC=off",
	"RELAY_CONCURRENCY=2 RELAY_SWEEP_INTERVAL=200ms",
	"RELAY_CDC=on RELAY_SWEEP_INTERVAL=300ms",
}

// faultKinds are what the plan draws from; the first faults of a plan
// are each kind once, in a random order, so that a short run sees every
// fault, and the rest are drawn with these weights.
var faultKinds = []struct {
	kind   string
	weight int
}{{"kill", 3}, {"replica", 2}, {"postgres", 1}, {"503", 1}, {"slow", 1}, {"down", 1}}

// planFaults draws the fault plan of a run from seed: a fault every 2 to
// 5 s; the runner has one fault at a time, with 5 s without one after
// it, and one second replica runs at a time; everything ends 2 s before
// the load does.
func planFaults(seed uint64, d time.Duration) []step {
	rng := rand.New(rand.NewPCG(seed, 1))
	between := func(lo, hi time.Duration) time.Duration { return lo + time.Duration(rng.Int64N(int64(hi-lo))) }
	var kinds []string
	total := 0
	for _, k := range faultKinds {
		kinds = append(kinds, k.kind)
		total += k.weight
	}
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	end := d - 2*time.Second
	var plan []step
	var runnerFree, replicaFree time.Duration
	for at, i := between(time.Second, 3*time.Second), 0; at < end; at, i = at+between(2*time.Second, 5*time.Second), i+1 {
		kind := drawFault(rng.IntN(total))
		if i < len(kinds) {
			kind = kinds[i]
		}
		lane := rng.IntN(3)
		switch kind {
		case "kill":
			plan = append(plan, step{at, "kill", lane, pick(rng, "main", "replica")})
		case "postgres":
			plan = append(plan, step{at, "postgres", 0, pick(rng, "fast", "immediate")})
		case "replica":
			if at < replicaFree {
				continue
			}
			replicaFree = min(at+between(4*time.Second, 12*time.Second), end)
			plan = append(plan, step{at, "replica", lane, pick(rng, replicaSettings...)}, step{replicaFree, "replica-stop", lane, ""})
		default: // the runner
			if at < runnerFree {
				continue
			}
			stop := min(at+between(2*time.Second, 5*time.Second), end)
			plan = append(plan, step{at, "runner", 0, kind}, step{stop, "runner", 0, "ok"})
			runnerFree = stop + 5*time.Second
		}
	}
	slices.SortStableFunc(plan, func(a, b step) int { return int(a.at - b.at) })
	return plan
}

// drawFault is the kind of faultKinds that x, below their total weight,
// falls on.
func drawFault(x int) string {
	for _, k := range faultKinds {
		if x -= k.weight; x < 0 {
			return k.kind
		}
	}
	panic("unreachable")
}

func pick(rng *rand.Rand, s ...string) string { return s[rng.IntN(len(s))] }

func describePlan(plan []step) string {
	var s []string
	for _, st := range plan {
		s = append(s, st.String())
	}
	return strings.Join(s, "; ")
}

// run carries out the plan, each step at its moment, and returns when the
// load's time is up.
func (sk *soak) run(plan []step) {
	for _, s := range plan {
		// The plan's moment: this is the fault's timing, not a wait for
		// a condition.
		time.Sleep(time.Until(sk.start.Add(s.at)))
		sk.do(s)
	}
	time.Sleep(time.Until(sk.start.Add(sk.cfg.duration)))
}

// do notes one step in the fault log and carries it out.
func (sk *soak) do(s step) {
	l := sk.lanes[s.lane]
	where := ""
	if strings.HasPrefix(s.do, "kill") || strings.HasPrefix(s.do, "replica") {
		where = " on " + l.name
	}
	sk.t.Logf("soak t=%s: %s %s%s", sk.since(), s.do, s.arg, where)
	sk.faults.count(strings.TrimSpace(s.do + " " + s.arg))
	switch s.do {
	case "kill":
		if s.arg == "replica" && l.replica != nil {
			sk.kill(l, l.replica)
			l.replica = nil
			break
		}
		sk.kill(l, l.main)
		l.main = sk.startRelay(l)
	case "replica":
		l.replica = sk.startRelay(l, strings.Fields(s.arg)...)
	case "replica-stop":
		sk.stopReplica(l)
	case "runner":
		sk.runnerFault(s.arg)
	case "postgres":
		from := time.Now()
		if err := sk.pg.Restart(s.arg); err != nil {
			sk.t.Fatal(err)
		}
		sk.faults.span(from, time.Now(), "postgres restart")
	}
}
