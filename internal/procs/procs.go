// Package procs runs the relay on one P (GOMAXPROCS=1) while it is lightly
// loaded, and on the runtime's default when it is busy.
//
// Why: at a steady few hundred events a second the relay's work comes in
// small pieces handed from one goroutine to the next, and with more Ps every
// hand-off wakes another OS thread; one P costs throughput only when the
// relay is busy, so the controller gives the Ps back as soon as its own CPU
// time asks for them, within a tick. The figures and the rule that was
// dropped: docs/decisions/0001-one-p-while-lightly-loaded.md.
package procs

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"sync/atomic"
	"time"
)

const (
	// tick is how often the load is read.
	tick = 250 * time.Millisecond
	// raiseCPU: on one P, this many cores of CPU over a tick ask for more.
	raiseCPU = 0.6
	// dropCPU, dropAfter: on the default Ps, the process goes back to one
	// after dropAfter below dropCPU cores. Below raiseCPU, so that a load
	// near it does not flap; and the calm needed doubles after each raise
	// that follows a drop within twice the calm then needed, up to maxCalm.
	dropCPU   = 0.4
	dropAfter = 5 * time.Second
	maxCalm   = 5 * time.Minute
)

// controller decides the Ps for the next tick from the last one's CPU.
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

// next returns the Ps for the next tick, given the cores of CPU the
// process used in the last one.
func (c *controller) next(cpu float64) int {
	if c.dropped >= 0 {
		c.dropped += tick
	}
	if c.cur == 1 {
		if cpu >= raiseCPU {
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
	if cpu < dropCPU {
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
		cpu := r.read()
		if after := c.next(cpu); after != before {
			if after == 1 {
				runtime.GOMAXPROCS(1)
			} else {
				runtime.SetDefaultGOMAXPROCS()
				c.max = runtime.GOMAXPROCS(0) // the default may have moved (cgroup)
				c.cur = c.max
			}
			log.Debug("procs: GOMAXPROCS changed", "from", before, "to", c.cur, "cpu", cpu)
		}
	}
}

// reader turns the process's cumulative CPU time into cores per tick.
type reader struct {
	at  time.Time
	cpu time.Duration
}

func newReader() *reader {
	r := &reader{}
	r.read()
	return r
}

func (r *reader) read() float64 {
	now, cpu := time.Now(), processCPU()
	var cores float64
	if d := now.Sub(r.at); !r.at.IsZero() && d > 0 {
		cores = (cpu - r.cpu).Seconds() / d.Seconds()
	}
	r.at, r.cpu = now, cpu
	return cores
}

// running is set while a Sizer sizes GOMAXPROCS.
var running atomic.Bool
