// Package procs runs the relay on one P (GOMAXPROCS=1) while it is lightly
// loaded, and on the runtime's default when it is busy.
//
// Why: at a steady few hundred events a second the relay's work is tiny
// and comes in small pieces (a WAL message, a POST, its answer), each
// handed from one goroutine to the next. With two or more Ps, every hand-
// off wakes another OS thread to run the woken goroutine in parallel, and
// the runtime's monitor thread polls every 20 µs while any P is busy. On
// the benchmark machine (2 cores) that was most of the relay's CPU: at 500
// events/s, 420–480 µs per event with the default of 2 Ps and 290 with one
// (perf put half of it in the monitor thread's sleeps and wake-ups). One P
// costs throughput when the relay is busy (a burst: 8,400 against 9,600
// events/s), so the controller gives the Ps back as soon as the load asks
// for them, within a tick.
//
// The load is read from the process's own CPU time and from the runtime's
// scheduling latencies (how long runnable goroutines waited for a P): on
// one P, a goroutine that waits means work is queueing behind the one
// thread, which happens before that thread's CPU time says so when the
// machine is shared with the database.
package procs

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"runtime/metrics"
	"sync/atomic"
	"time"
)

const (
	// tick is how often the load is read.
	tick = 250 * time.Millisecond
	// raiseCPU: on one P, this many cores of CPU over a tick ask for more.
	raiseCPU = 0.6
	// raiseWait: on one P, a share of scheduling latencies above waitLong
	// this large over a tick asks for more.
	raiseWait = 0.05
	waitLong  = 500 * time.Microsecond
	// minWaits is the fewest scheduling latencies a tick needs for its
	// share of long waits to mean anything. The runtime records one
	// goroutine's in eight, so 25 is about 200 scheduling events.
	minWaits = 25
	// dropCPU, dropAfter: on the default Ps, the process goes back to one
	// after dropAfter below dropCPU cores with no long waits. Below the
	// raise thresholds, so that a load near them does not flap; and the
	// calm needed doubles after each raise that follows a drop within
	// twice the calm then needed, up to maxCalm.
	dropCPU   = 0.4
	dropAfter = 5 * time.Second
	maxCalm   = 5 * time.Minute
)

// sample is the load over one tick.
type sample struct {
	CPU   float64 // cores of CPU the process used
	Waits uint64  // scheduling latencies recorded (the runtime samples them)
	Long  uint64  // of those, how many were longer than waitLong
}

// controller decides the Ps for the next tick from the last one's sample.
type controller struct {
	max     int           // the runtime's default
	cur     int           // Ps now
	calm    time.Duration // below the drop thresholds so far
	need    time.Duration // calm needed to drop
	dropped time.Duration // time since the last drop; -1 before any
}

func newController(max int) *controller {
	return &controller{max: max, cur: 1, need: dropAfter, dropped: -1}
}

// next returns the Ps for the next tick.
func (c *controller) next(s sample) int {
	if c.dropped >= 0 {
		c.dropped += tick
	}
	longShare := 0.0
	if s.Waits >= minWaits {
		longShare = float64(s.Long) / float64(s.Waits)
	}
	if c.cur == 1 {
		if s.CPU >= raiseCPU || longShare >= raiseWait {
			c.cur, c.calm = c.max, 0
			// A raise soon after a drop: the load sits near the line, so
			// ask for a longer calm before the next drop.
			if c.dropped >= 0 && c.dropped < 2*c.need {
				c.need = min(2*c.need, maxCalm)
			} else {
				c.need = dropAfter
			}
		}
		return c.cur
	}
	if s.CPU < dropCPU && longShare < raiseWait/2 {
		c.calm += tick
	} else {
		c.calm = 0
	}
	if c.calm >= c.need {
		c.cur, c.calm, c.dropped = 1, 0, 0
	}
	return c.cur
}

// Sizer sizes GOMAXPROCS to the load while it runs.
type Sizer struct {
	Log *slog.Logger
}

// Run sizes GOMAXPROCS until ctx ends, then gives the runtime its default
// back. It does nothing when GOMAXPROCS is set in the environment (the
// operator's choice stands) or when the default is one P already.
//
// GOMAXPROCS belongs to the process, so only one Sizer sizes it at a time
// (tests run several relays in one process); the others return at once.
func (z Sizer) Run(ctx context.Context) error {
	log := z.Log
	if !cpuKnown || os.Getenv("GOMAXPROCS") != "" || runtime.GOMAXPROCS(0) <= 1 {
		return nil
	}
	if !running.CompareAndSwap(false, true) {
		return nil
	}
	defer running.Store(false)
	c := newController(runtime.GOMAXPROCS(0))
	runtime.GOMAXPROCS(1)
	defer runtime.SetDefaultGOMAXPROCS()
	r := newReader()
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		before := c.cur
		s := r.read()
		if after := c.next(s); after != before {
			if after == 1 {
				runtime.GOMAXPROCS(1)
			} else {
				runtime.SetDefaultGOMAXPROCS()
				c.max = runtime.GOMAXPROCS(0) // the default may have moved (cgroup)
				c.cur = c.max
			}
			log.Debug("procs: GOMAXPROCS changed", "from", before, "to", c.cur,
				"cpu", s.CPU, "waits", s.Waits, "long", s.Long)
		}
	}
}

// reader turns the process's cumulative counters into per-tick samples.
type reader struct {
	at      time.Time
	cpu     time.Duration
	waits   []uint64 // cumulative bucket counts
	buckets []float64
	m       []metrics.Sample
}

func newReader() *reader {
	r := &reader{m: []metrics.Sample{{Name: "/sched/latencies:seconds"}}}
	r.read()
	return r
}

func (r *reader) read() sample {
	now, cpu := time.Now(), processCPU()
	metrics.Read(r.m)
	var s sample
	if d := now.Sub(r.at); !r.at.IsZero() && d > 0 {
		s.CPU = (cpu - r.cpu).Seconds() / d.Seconds()
	}
	r.at, r.cpu = now, cpu
	if r.m[0].Value.Kind() != metrics.KindFloat64Histogram {
		return s
	}
	h := r.m[0].Value.Float64Histogram()
	if len(r.waits) != len(h.Counts) {
		r.waits = make([]uint64, len(h.Counts))
		r.buckets = h.Buckets
		copy(r.waits, h.Counts)
		return s
	}
	for i, n := range h.Counts {
		d := n - r.waits[i]
		s.Waits += d
		// Bucket i spans Buckets[i] to Buckets[i+1].
		if r.buckets[i] >= waitLong.Seconds() {
			s.Long += d
		}
		r.waits[i] = n
	}
	return s
}

// running is set while a Sizer sizes GOMAXPROCS.
var running atomic.Bool
