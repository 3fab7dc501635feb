package faults

import (
	"cmp"
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
// 5 s; the runner has one fault at a time, for 2 to 4 s, and none for 5 s
// after it (1 s while the first faults try each kind once), so that some
// rows live while no fault is on; one second replica runs at a time, for
// 4 to 12 s; everything ends 2 s before the load does.
func planFaults(seed uint64, d time.Duration) []step {
	p := &planner{rng: rand.New(rand.NewPCG(seed, 1)), end: d - 2*time.Second}
	var todo []string // each kind once first
	total := 0
	for _, k := range faultKinds {
		todo = append(todo, k.kind)
		total += k.weight
	}
	p.rng.Shuffle(len(todo), func(i, j int) { todo[i], todo[j] = todo[j], todo[i] })
	for at := p.between(time.Second, 3*time.Second); at < p.end; at += p.between(2*time.Second, 5*time.Second) {
		kind := drawFault(p.rng.IntN(total))
		if len(todo) > 0 {
			kind = todo[0]
		}
		p.calm = 5 * time.Second
		if len(todo) > 0 {
			p.calm = time.Second // a short run sees every fault
		}
		if p.add(at, kind) && len(todo) > 0 {
			todo = todo[1:]
		}
	}
	slices.SortStableFunc(p.plan, func(a, b step) int { return cmp.Compare(a.at, b.at) })
	return p.plan
}

// planner is planFaults' state.
type planner struct {
	rng                     *rand.Rand
	end                     time.Duration
	plan                    []step
	runnerFree, replicaFree time.Duration
	calm                    time.Duration // without a runner fault after one
}

func (p *planner) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(p.rng.Int64N(int64(hi-lo)))
}

// add plans a fault of kind at at, and reports false when the runner or
// the second replica is still busy with one.
func (p *planner) add(at time.Duration, kind string) bool {
	lane := p.rng.IntN(3)
	switch kind {
	case "kill":
		p.plan = append(p.plan, step{at, "kill", lane, pick(p.rng, "main", "replica")})
	case "postgres":
		p.plan = append(p.plan, step{at, "postgres", 0, pick(p.rng, "fast", "immediate")})
	case "replica":
		if at < p.replicaFree {
			return false
		}
		p.replicaFree = min(at+p.between(4*time.Second, 12*time.Second), p.end)
		p.plan = append(p.plan, step{at, "replica", lane, pick(p.rng, replicaSettings...)}, step{p.replicaFree, "replica-stop", lane, ""})
	default: // the runner
		if at < p.runnerFree {
			return false
		}
		stop := min(at+p.between(2*time.Second, 4*time.Second), p.end)
		p.plan = append(p.plan, step{at, "runner", 0, kind}, step{stop, "runner", 0, "ok"})
		p.runnerFree = stop + p.calm
	}
	return true
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
