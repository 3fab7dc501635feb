package main

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// latencyResult is commit → runner receipt at one steady rate.
type latencyResult struct {
	Mode    string       `json:"mode"`
	Rate    int          `json:"rate"`
	Load    loadStats    `json:"load"`
	Latency distribution `json:"latency"`
	// Missing were committed but not received within the wait.
	Missing    int `json:"missing"`
	Duplicates int `json:"duplicates"`
	// Early were received before their COMMIT returned to the inserter
	// (the relay can see a commit before the client hears of it); they
	// count with their negative latency.
	Early int `json:"early"`
	// CPU is spent from the start of the measured load to the last receipt.
	CPU cpuUse `json:"cpu"`
	// Stream and Sweep are the relay's own delivery counts for the run.
	Stream float64 `json:"stream_delivered"`
	Sweep  float64 `json:"sweep_delivered"`
	// Warmup is how many events the warm-up committed.
	Warmup int `json:"warmup_events"`
	// Work is the relay's statements and the row versions over the
	// warm-up and the run, both at this rate, to the relay's exit.
	Work *dbWork `json:"db_work,omitempty"`
}

// latency measures every rate in every mode: one database per mode, a
// relay per rate.
func (b *bench) latency(ctx context.Context) ([]latencyResult, error) {
	var out []latencyResult
	var errs []error
	for _, m := range modes() {
		rs, err := b.latencyMode(ctx, m)
		out = append(out, rs...)
		if err != nil {
			if ctx.Err() != nil {
				return out, err
			}
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

func (b *bench) latencyMode(ctx context.Context, m mode) ([]latencyResult, error) {
	db, err := b.newDB(ctx, "latency_"+m.Name)
	if err != nil {
		return nil, err
	}
	defer b.dropDB(db)
	var out []latencyResult
	for _, rate := range b.plan.LatencyRates {
		r, err := b.latencyRate(ctx, db, m, rate)
		out = append(out, r)
		if err != nil {
			return out, err
		}
		b.logf("latency %-10s %5d/s: p50 %.2f ms, p95 %.2f ms, p99 %.2f ms, max %.1f ms (%d events, %.0f/s achieved, %d missing)%s",
			m.Name, rate, r.Latency.P50, r.Latency.P95, r.Latency.P99, r.Latency.Max, r.Latency.Count, r.Load.AchievedRate, r.Missing, r.Work.logLine())
	}
	return out, nil
}

// latencyRate measures one rate with a relay of its own. Its backends
// publish their statistics when they exit, so the row versions counted for
// this rate are all of its own and none of the next rate's.
func (b *bench) latencyRate(ctx context.Context, db *database, m mode, rate int) (latencyResult, error) {
	p, err := b.startRelay(ctx, db, m, fmt.Sprintf("latency, %s, %s/s", m.Name, thousands(rate)))
	if err != nil {
		return latencyResult{Mode: m.Name, Rate: rate}, err
	}
	work0 := b.workNow(ctx, db)
	res, err := b.latencyAt(ctx, db, p, m, pace{rate: rate, conns: b.plan.LatencyConns})
	p.stop()
	if err == nil && ctx.Err() == nil {
		res.Work = workBetween(work0, b.workAfter(ctx, db), res.Warmup+res.Load.Committed)
	}
	return res, err
}

// pace is a steady load: rate single-row transactions a second from conns
// connections, every row with ordering key key ("" for none).
type pace struct {
	rate, conns int
	key         string
}

// latencyAt warms up at the pace, then measures for the plan's duration.
func (b *bench) latencyAt(ctx context.Context, db *database, p *relayProc, m mode, pc pace) (latencyResult, error) {
	rate := pc.rate
	res := latencyResult{Mode: m.Name, Rate: rate}
	// The stream should deliver within milliseconds; an event it missed
	// waits for the (1 min) sweep and counts as missing. Sweep-only gets
	// two intervals.
	wait := 10 * time.Second
	if !m.stream() {
		wait += 2 * m.Sweep
	}
	b.waitQuiet(ctx, b.quiet)
	var err error
	if res.Warmup, err = b.warmUp(ctx, db, pc, wait); err != nil {
		return res, err
	}

	b.runner.Reset(true, int(float64(rate)*b.plan.LatencyDuration.Seconds()))
	before, _ := p.deliveries()
	cpu0 := b.cpuNow(p)
	sends, st, err := paced(ctx, db.pool, rate, pc.conns, b.plan.LatencyDuration, pc.key)
	res.Load = st
	if err != nil {
		return res, err
	}
	if _, err := b.runner.WaitDistinct(ctx, len(sends), wait); err != nil {
		return res, err
	}
	res.CPU = cpuBetween(cpu0, b.cpuNow(p))
	res.Stream, res.Sweep = p.deliveredSince(before)
	c := b.runner.Counts()
	res.Duplicates = c.Requests - c.Distinct
	latencies(&res, sends, b.runner.FirstReceipts(), wait)
	return res, nil
}

// warmUp runs the load at rate for the plan's warm-up, uncounted:
// connections, statement caches and keep-alive on both sides. It says how
// many events it committed.
func (b *bench) warmUp(ctx context.Context, db *database, pc pace, wait time.Duration) (int, error) {
	b.runner.Reset(true, int(float64(pc.rate)*b.plan.LatencyWarmup.Seconds()))
	warm, _, err := paced(ctx, db.pool, pc.rate, pc.conns, b.plan.LatencyWarmup, pc.key)
	if err != nil {
		return len(warm), err
	}
	_, err = b.runner.WaitDistinct(ctx, len(warm), wait)
	return len(warm), err
}

// latencies fills res with each event's commit-to-receipt latency from
// the first receipt of every id sent.
func latencies(res *latencyResult, sends []sent, got map[string]time.Time, wait time.Duration) {
	ms := make([]float64, 0, len(sends))
	for _, s := range sends {
		at, ok := got[s.id]
		if !ok {
			res.Missing++
			continue
		}
		l := float64(since(at)-s.at) / 1e6
		if l < 0 {
			res.Early++
		}
		ms = append(ms, l)
	}
	// A missing event is later than the wait: it stays in the figures at
	// that value, so that a stream that drops events cannot look fast.
	waitMs := float64(wait.Milliseconds())
	for range res.Missing {
		ms = append(ms, waitMs)
	}
	res.Latency = summarise(ms)
	if res.Missing > 0 {
		res.Latency.CensoredMs = waitMs
	}
}

func (r *results) latencyOf(mode string, rate int) *latencyResult {
	for i := range r.Latency {
		if l := &r.Latency[i]; l.Mode == mode && l.Rate == rate && l.Latency.Count > 0 {
			return l
		}
	}
	return nil
}

// latencyGoal judges quantile q ("p50" or "p99") of the stream's latency
// at rate.
func latencyGoal(rate int, q string) func(*results, goal) target {
	return func(r *results, g goal) target {
		t := unmeasured(fmt.Sprintf("stream latency %s at %s events/s", q, thousands(rate)), fmt.Sprintf("≤ %s ms", num(g.limit)))
		if l := r.latencyOf(streamMode.Name, rate); l != nil {
			v := l.Latency.P50
			if q == "p99" {
				v = l.Latency.P99
			}
			t.Measured, t.Verdict = fmt.Sprintf("%s ms", l.Latency.cell(v)), verdictAtMost(v, g.limit)
			if l.Missing > 0 {
				t.Measured += fmt.Sprintf(" (%d of %d events missing)", l.Missing, l.Latency.Count)
			}
		}
		return t
	}
}

func latencyTable(r *results) string {
	return mdTable("| mode | rate (events/s) | achieved | events | p50 ms | p95 ms | p99 ms | p99.9 ms | max ms | missing | dup | via stream / sweep | CPU s: relay / Postgres / harness / other | machine busy |\n",
		"|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|\n",
		r.Latency, func(l latencyResult) string {
			d := l.Latency
			return fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %d | %s / %s | %s | %.0f %% |\n",
				l.Mode, thousands(l.Rate), thousands(int(l.Load.AchievedRate)), thousands(d.Count),
				d.cell(d.P50), d.cell(d.P95), d.cell(d.P99), d.cell(d.P999), d.cell(d.Max), l.Missing, l.Duplicates,
				thousands(int(l.Stream)), thousands(int(l.Sweep)), cpuCell(l.CPU), 100*l.CPU.Busy)
		})
}

// mdLatency is section 1: commit to receipt.
func mdLatency(b *markdown, r *results) {
	b.w("\n## 1. Latency: commit → runner receipt\n\n")
	b.w("Single-row transactions from %d connections at a steady rate, %s per rate after a %s warm-up that is not counted; each rate has a relay of its own, started before its warm-up. Each insert carries an `event_id` made by the harness (a random UUID), and its latency is the runner's receipt time minus the moment its `COMMIT` returned, both on the harness's monotonic clock. \"achieved\" is the rate the load really committed at; \"missing\" were not received within 10 s (stream) or 10 s plus two sweep intervals; they stay in the quantiles at that wait, shown as \"> wait\".\n\n",
		r.Plan.LatencyConns, r.Plan.LatencyDuration, r.Plan.LatencyWarmup)
	b.w("%s\n", latencyTable(r))
	b.w("![Latency distribution, stream versus sweep-only](bench-latency.svg)\n\n")
	early := 0
	for _, l := range r.Latency {
		early += l.Early
	}
	if early > 0 {
		b.w("%d events reached the runner before their `COMMIT` returned to the inserter (the relay can hear of a commit before the client does); they count with their negative latency.\n\n", early)
	}
}
