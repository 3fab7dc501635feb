package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

// throughputResult is the time to deliver one load, and what it cost.
type throughputResult struct {
	Mode   string `json:"mode"`
	Load   string `json:"load"`
	Kind   string `json:"kind"` // bulk or single
	Events int    `json:"events"`
	// InsertSeconds is how long the database took to take the rows: the
	// INSERT … SELECT statement, or all the single-row commits.
	InsertSeconds float64 `json:"insert_seconds"`
	// DeliverSeconds runs from the bulk COMMIT's return, or from the
	// first single-row insert, to the last receipt at the runner.
	DeliverSeconds float64 `json:"deliver_seconds"`
	EventsPerSec   float64 `json:"events_per_second"`
	// FirstReceiptSeconds is from the same start to the first receipt.
	FirstReceiptSeconds float64 `json:"first_receipt_seconds"`
	TimedOut            bool    `json:"timed_out"`
	Missing             int     `json:"missing"`
	Duplicates          int     `json:"duplicates"`

	CPU        cpuUse  `json:"cpu"`
	CPUPer10k  float64 `json:"relay_cpu_seconds_per_10k"`
	PeakRSSMiB float64 `json:"relay_peak_rss_mib"`
	Stream     float64 `json:"stream_delivered"`
	Sweep      float64 `json:"sweep_delivered"`
}

// load is one throughput workload.
type load struct {
	kind string
	n    int
	keys int // ordering keys of single-row txns; 0: none
	// analyzed runs ANALYZE on the table first, when every row in it is
	// delivered: the statistics then say that almost nothing is pending,
	// as a production outbox's do when a burst comes.
	analyzed bool
}

func (l load) String() string {
	switch {
	case l.kind == "bulk" && l.analyzed:
		return fmt.Sprintf("INSERT … SELECT of %s rows, table analyzed when delivered", thousands(l.n))
	case l.kind == "bulk":
		return fmt.Sprintf("INSERT … SELECT of %s rows", thousands(l.n))
	case l.keys > 0:
		return fmt.Sprintf("%s single-row txns, %s keys", thousands(l.n), thousands(l.keys))
	}
	return fmt.Sprintf("%s single-row txns", thousands(l.n))
}

func (b *bench) loads() []load {
	var ls []load
	for _, n := range b.plan.BulkSizes {
		ls = append(ls, load{kind: "bulk", n: n})
	}
	ls = append(ls, load{kind: "single", n: b.plan.SingleN})
	// Last, so that the table holds every earlier load's rows, delivered.
	return append(ls, load{kind: "bulk", n: b.plan.BulkSizes[0], analyzed: true})
}

// throughput runs every load in every mode: one database per mode, a fresh
// relay per load so that its peak RSS and CPU belong to that load.
func (b *bench) throughput(ctx context.Context) ([]throughputResult, error) {
	var out []throughputResult
	var errs []error
	for _, m := range modes() {
		db, err := b.newDB(ctx, "throughput_"+m.Name)
		if err != nil {
			return out, err
		}
		for _, l := range b.loads() {
			r, err := b.throughputRun(ctx, db, m, l)
			out = append(out, r)
			if err != nil {
				if ctx.Err() != nil {
					b.dropDB(db)
					return out, err
				}
				errs = append(errs, fmt.Errorf("%s, %s: %w", m.Name, l, err))
				continue
			}
			b.logf("throughput %-10s %-32s %6.2f s, %6.0f events/s; relay %.2f CPU s per 10k, peak RSS %.1f MiB",
				m.Name, l, r.DeliverSeconds, r.EventsPerSec, r.CPUPer10k, r.PeakRSSMiB)
		}
		b.dropDB(db)
	}
	return out, errors.Join(errs...)
}

func (b *bench) throughputRun(ctx context.Context, db *database, m mode, l load) (res throughputResult, err error) {
	res = throughputResult{Mode: m.Name, Load: l.String(), Kind: l.kind, Events: l.n}
	p, err := b.startRelay(ctx, db, m, fmt.Sprintf("throughput, %s, %s", m.Name, l))
	if err != nil {
		return res, err
	}
	defer func() { // the named result takes the relay's figures
		st := p.stop()
		res.PeakRSSMiB, res.Stream, res.Sweep = st.PeakRSSMiB, st.Stream, st.Sweep
	}()
	if l.analyzed {
		if _, err := db.pool.Exec(ctx, "ANALYZE "+table); err != nil {
			return res, err
		}
	}
	b.runner.Reset(true, l.n)
	limit := 30*time.Second + time.Duration(l.n/2000)*time.Second
	b.waitQuiet(ctx, b.quiet)
	cpu0 := b.cpuNow(p)
	start, err := b.insertLoad(ctx, db, l, &res)
	if err != nil {
		return res, err
	}
	ok, err := b.runner.WaitDistinct(ctx, l.n, limit)
	if err != nil {
		return res, err
	}
	cpu1 := b.cpuNow(p)
	c := b.runner.Counts()
	res.TimedOut = !ok
	res.Missing = max(l.n-(c.Distinct), 0)
	res.Duplicates = c.Requests - c.Distinct
	res.DeliverSeconds, res.FirstReceiptSeconds, res.EventsPerSec = receiptRate(c, start)
	res.CPU = cpuBetween(cpu0, cpu1)
	res.CPUPer10k = relayCPUPer10k(res.CPU, c)
	if res.TimedOut {
		return res, fmt.Errorf("only %d of %d events delivered within %s", c.Distinct, l.n, limit)
	}
	return res, nil
}

// insertLoad writes load l and returns the moment its clock starts: when
// the bulk COMMIT returned, or at the first single-row insert.
func (b *bench) insertLoad(ctx context.Context, db *database, l load, res *throughputResult) (start int64, err error) {
	if l.kind == "bulk" {
		t := now()
		err = bulk(ctx, db.pool, l.n)
		start = now()
		res.InsertSeconds = float64(start-t) / 1e9
		return start, err
	}
	start = now()
	_, st, err := flood(ctx, db.pool, l.n, b.plan.SingleConns, l.keys)
	res.InsertSeconds = st.Seconds
	return start, err
}

// receiptRate is what the runner's counts say of a run that started at
// start (on the harness clock): seconds to the last and to the first
// receipt, and distinct events per second until the last.
func receiptRate(c relaytest.Counts, start int64) (last, first, perSec float64) {
	last = float64(since(c.Last)-start) / 1e9
	first = float64(since(c.First)-start) / 1e9
	if last > 0 {
		perSec = float64(c.Distinct) / last
	}
	return last, first, perSec
}

// relayCPUPer10k is the relay's CPU seconds per 10,000 requests.
func relayCPUPer10k(cpu cpuUse, c relaytest.Counts) float64 {
	return cpu.Relay / float64(max(c.Requests, 1)) * 10_000
}

// throughputOf prefers the stream; without it, sweep-only stands in.
func (r *results) throughputOf(kind string, n int) *throughputResult {
	for _, mode := range []string{streamMode.Name, sweepMode.Name} {
		for i := range r.Throughput {
			if t := &r.Throughput[i]; t.Mode == mode && t.Kind == kind && t.Events == n && t.EventsPerSec > 0 {
				return t
			}
		}
	}
	return nil
}

// throughputGoal judges the events/s of load kind/n (n 0: the plan's
// single-row load), by the stream or, without it, sweep-only.
func throughputGoal(kind string, n int) func(*results, goal) target {
	return func(r *results, g goal) target {
		if n == 0 {
			n = r.Plan.SingleN
		}
		t := unmeasured(load{kind: kind, n: n}.String(), fmt.Sprintf("≥ %s events/s", thousands(int(g.limit))))
		if x := r.throughputOf(kind, n); x != nil {
			t.What += " (" + x.Mode + ")"
			t.Measured, t.Verdict = fmt.Sprintf("%s events/s", thousands(int(x.EventsPerSec))), verdictAtLeast(x.EventsPerSec, g.limit)
		}
		return t
	}
}

func throughputTable(r *results) string {
	return mdTable("| mode | load | insert s | delivered in s | events/s | target | | CPU ceiling events/s | relay CPU s / 10k | relay peak RSS MiB | CPU s: relay / Postgres / harness / other | machine busy |\n",
		"|---|---|--:|--:|--:|--:|---|--:|--:|--:|---|--:|\n",
		r.Throughput, func(t throughputResult) string {
			goal, verdict := "", ""
			switch {
			case t.Kind == "bulk" && t.Events == 20_000:
				goal, verdict = atLeastCell(t.EventsPerSec, limitOf("throughput.bulk.20000"))
			case t.Kind == "single":
				goal, verdict = atLeastCell(t.EventsPerSec, limitOf("throughput.single"))
			}
			if t.TimedOut {
				verdict += fmt.Sprintf(" (timed out, %d missing)", t.Missing)
			}
			return fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.0f %% |\n",
				t.Mode, t.Load, num(t.InsertSeconds), num(t.DeliverSeconds), thousands(int(t.EventsPerSec)), goal, verdict,
				thousands(int(t.ceiling(r.Machine.CPUs))), num(t.CPUPer10k), num(t.PeakRSSMiB), cpuCell(t.CPU), 100*t.CPU.Busy)
		})
}

// ceiling is the events/s the machine's CPUs allow when every event
// costs what it cost t's relay, PostgreSQL and harness together; 0 when
// nothing was measured.
func (t throughputResult) ceiling(cpus int) float64 {
	if total := t.CPU.Relay + t.CPU.Postgres + t.CPU.Bench; total > 0 {
		return float64(max(cpus, 1)*t.Events) / total
	}
	return 0
}

// throughputIn is the throughput of load kind/n in mode, when measured.
func (r *results) throughputIn(mode, loadName string) *throughputResult {
	for i := range r.Throughput {
		if t := &r.Throughput[i]; t.Mode == mode && t.Load == loadName && t.EventsPerSec > 0 {
			return t
		}
	}
	return nil
}

func bulkStreamGoal(r *results, g goal) target {
	l := load{kind: "bulk", n: 20_000}.String()
	t := unmeasured(l+" (stream)", fmt.Sprintf("≥ %s events/s", thousands(int(g.limit))))
	if x := r.throughputIn(streamMode.Name, l); x != nil {
		t.Measured, t.Verdict = fmt.Sprintf("%s events/s", thousands(int(x.EventsPerSec))), verdictAtLeast(x.EventsPerSec, g.limit)
	}
	return t
}

// streamVsSweepGoal compares the modes on every load both ran, and
// shows the one where the stream fared worst.
func streamVsSweepGoal(r *results, g goal) target {
	t := unmeasured("stream never slower than sweep-only, same load", fmt.Sprintf("≥ %.0f %% of sweep-only", 100*g.limit))
	worst := 0.0
	for _, s := range r.Throughput {
		if s.Mode != streamMode.Name || s.EventsPerSec <= 0 {
			continue
		}
		w := r.throughputIn(sweepMode.Name, s.Load)
		if w == nil {
			continue
		}
		if ratio := s.EventsPerSec / w.EventsPerSec; worst == 0 || ratio < worst {
			worst = ratio
			t.What = "stream never slower than sweep-only, same load (the stream's worst: " + s.Load + ")"
			t.Measured = fmt.Sprintf("%s vs %s events/s (%.0f %%)", thousands(int(s.EventsPerSec)), thousands(int(w.EventsPerSec)), 100*ratio)
			t.Verdict = verdictAtLeast(ratio, g.limit)
		}
	}
	return t
}

// mdThroughput is section 2, with the CPU ceiling behind its misses.
func mdThroughput(b *markdown, r *results) {
	b.w("## 2. Throughput\n\n")
	b.w("A fresh relay per load, on one table per mode that keeps every earlier load's rows (the first load starts empty). For an `INSERT … SELECT` (one transaction) the clock starts when its `COMMIT` returns; for single-row transactions (%d connections, as fast as they go) it starts at the first insert. It stops at the last receipt. One POST per event. The last load runs `ANALYZE` first, on a table whose rows (the earlier loads') are all delivered, so that its statistics say almost nothing is pending, as a production outbox's do when a burst comes. The CPU ceiling is the machine's %d CPUs divided by the CPU seconds one event cost the relay, PostgreSQL and the harness together: no load on this machine goes faster.\n\n", r.Plan.SingleConns, r.Machine.CPUs)
	b.w("%s\n", throughputTable(r))
	mdBurst(b, r)
}
