package main

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// overloadResult is the stream offered twice its capacity, then its
// normal rate, on an empty table and on one holding many delivered rows.
type overloadResult struct {
	// Capacity is the median events/s of bursts of single-row txns (the
	// throughput measure's load) delivered by the stream in this run.
	Capacity     float64       `json:"capacity_events_per_second"`
	CapacityRuns []float64     `json:"capacity_runs"`
	NormalRate   int           `json:"normal_rate"`
	Runs         []overloadRun `json:"runs"`
}

// overloadRun is one table's overload, with a relay of its own.
type overloadRun struct {
	Table     string       `json:"table"`
	Delivered int          `json:"delivered_rows"` // in the table, analyzed, before the run
	Steady    distribution `json:"steady"`         // commit → receipt at the normal rate before
	Offered   int          `json:"offered_rate"`
	Overload  loadStats    `json:"overload_load"`
	Normal    loadStats    `json:"normal_load"`
	// Goodput is the events first received per second while the overload
	// was offered; Share is it over the capacity.
	Goodput float64 `json:"goodput"`
	Share   float64 `json:"goodput_share"`
	// Backlog is the overload's events not received by its end;
	// DrainedSeconds runs from its end to the last of them received.
	Backlog        int     `json:"backlog"`
	DrainedSeconds float64 `json:"drained_seconds"`
	// RecoverySeconds runs from the overload's end to the first moment
	// from which, for three 1 s windows in a row, the events committed in
	// each have a p99 within recoveryFactor × the steady p99; Recovered is
	// false when the normal load had no such moment.
	RecoverySeconds float64   `json:"recovery_seconds"`
	Recovered       bool      `json:"recovered"`
	P99s            []float64 `json:"p99_per_second_ms"` // of each 1 s after the overload, by commit time
	// LagMiB is the slot's confirmed-flush lag (the WAL the stream has
	// not read through) each second from the overload's start.
	LagMiB []float64 `json:"slot_lag_mib"`
	// Lost were never received, lostWait after the last commit.
	Lost       int     `json:"lost"`
	Duplicates int     `json:"duplicates"`
	Stream     float64 `json:"stream_delivered"`
	Sweep      float64 `json:"sweep_delivered"`
	CPU        cpuUse  `json:"cpu"` // from the overload's start to the last receipt
	// OfferedCPU is the CPU while the overload was offered: whether the
	// machine had room left for the relay then.
	OfferedCPU cpuUse `json:"cpu_offered"`
}

const (
	recoveryFactor = 2.0 // "normal": a p99 within this × the steady p99
	// lostWait covers two sweep intervals, for rows the stream leaves to
	// the sweeper, and the backlog's drain.
	lostWait = 2*time.Minute + 30*time.Second
)

// overload measures the capacity, then overloads a fresh and a warm table.
func (b *bench) overload(ctx context.Context) (*overloadResult, error) {
	res := &overloadResult{NormalRate: b.plan.OverloadNormalRate}
	if err := b.overloadCapacity(ctx, res); err != nil {
		return res, err
	}
	for _, warm := range []int{0, b.plan.OverloadWarmRows} {
		r, err := b.overloadTable(ctx, res, warm)
		res.Runs = append(res.Runs, r)
		if err != nil {
			return res, fmt.Errorf("%s table: %w", r.Table, err)
		}
		b.logf("overload %s: offered %d/s, committed %.0f/s; goodput %.0f/s (%.0f %%); backlog %d delivered %.1f s after; p99 %.2f ms before, normal after %s; stream lag max %.1f MiB; lost %d, dup %d (stream %.0f, sweep %.0f)",
			r.Table, r.Offered, r.Overload.AchievedRate, r.Goodput, 100*r.Share, r.Backlog, r.DrainedSeconds,
			r.Steady.P99, r.recoveryCell(), r.maxLag(), r.Lost, r.Duplicates, r.Stream, r.Sweep)
	}
	return res, nil
}

// overloadCapacity runs the bursts, a relay each, on a database of their own.
func (b *bench) overloadCapacity(ctx context.Context, res *overloadResult) error {
	db, err := b.newDB(ctx, "overload_capacity")
	if err != nil {
		return err
	}
	defer b.dropDB(db)
	for range b.plan.OverloadCapacityRuns {
		t, err := b.throughputRun(ctx, db, streamMode, load{kind: "single", n: b.plan.SingleN})
		if err != nil {
			return fmt.Errorf("capacity: %w", err)
		}
		res.CapacityRuns = append(res.CapacityRuns, t.EventsPerSec)
	}
	res.Capacity = median(res.CapacityRuns)
	b.logf("overload: capacity %.0f events/s (runs %.0f)", res.Capacity, res.CapacityRuns)
	return nil
}

// overloadTable measures the normal rate, then the overload and the normal
// rate after it, with one relay, on a new table holding warm delivered rows.
func (b *bench) overloadTable(ctx context.Context, res *overloadResult, warm int) (overloadRun, error) {
	r := overloadRun{Table: "fresh", Delivered: warm}
	if warm > 0 {
		r.Table = "warm"
	}
	db, err := b.newDB(ctx, "overload_"+r.Table)
	if err != nil {
		return r, err
	}
	defer b.dropDB(db)
	if warm > 0 {
		if err := b.fillDelivered(ctx, db, warm); err != nil {
			return r, err
		}
	}
	p, err := b.startRelay(ctx, db, streamMode, "overload, "+r.Table+" table")
	if err != nil {
		return r, err
	}
	defer p.stop()
	steady, err := b.latencyAt(ctx, db, p, streamMode, pace{rate: res.NormalRate, conns: b.plan.LatencyConns})
	if err != nil {
		return r, fmt.Errorf("steady: %w", err)
	}
	r.Steady, r.Steady.CDF = steady.Latency, nil
	return r, b.overloadLoad(ctx, db, p, res, &r)
}

// overloadLoad offers twice the capacity, then the normal rate for as long
// as the recovery needs to be judged, and waits for every event.
func (b *bench) overloadLoad(ctx context.Context, db *database, p *relayProc, res *overloadResult, r *overloadRun) error {
	r.Offered = int(2 * res.Capacity)
	b.runner.Reset(true, r.Offered*int(b.plan.OverloadDuration.Seconds()))
	before, _ := p.deliveries()
	cpu0 := b.cpuNow(p)
	lags := b.slotLag(ctx, db.slot)
	defer lags()
	start := now()
	hot, st, err := pacedFor(ctx, db.pool, r.Offered, b.plan.SingleConns, b.plan.OverloadDuration)
	if r.Overload = st; err != nil {
		return err
	}
	end := now()
	r.OfferedCPU = cpuBetween(cpu0, b.cpuNow(p))
	// The backlog's drain at the overload's goodput, the target's time
	// and three windows, within two minutes.
	got := b.runner.Counts().Distinct
	drain := float64(len(hot)-got) / max(float64(got)/(float64(end-start)/1e9)-float64(res.NormalRate), 1)
	normal := min(max(b.plan.OverloadNormal, time.Duration((drain+limitOf("overload.recovery")+3)*float64(time.Second))), 2*time.Minute)
	calm, st, err := paced(ctx, db.pool, res.NormalRate, b.plan.LatencyConns, normal, "")
	if r.Normal = st; err != nil {
		return err
	}
	_, err = b.runner.WaitDistinct(ctx, len(hot)+len(calm), lostWait)
	if r.LagMiB = lags(); err != nil {
		return err
	}
	r.CPU = cpuBetween(cpu0, b.cpuNow(p))
	r.Stream, r.Sweep = p.deliveredSince(before)
	c := b.runner.Counts()
	r.Duplicates = c.Requests - c.Distinct
	r.judge(hot, calm, b.runner.FirstReceipts(), start, end, res.Capacity)
	return nil
}

// slotLag samples the slot's confirmed-flush lag, in MiB, once a second
// until the function it returns is called; that returns the samples.
func (b *bench) slotLag(ctx context.Context, slot string) func() []float64 {
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	var mib []float64
	go func() {
		defer close(done)
		for t0, i := time.Now(), 1; sleep(lctx, time.Until(t0.Add(time.Duration(i)*time.Second))) == nil; i++ {
			sl, err := store.SlotInfo(lctx, b.admin, slot)
			if err != nil {
				return
			}
			mib = append(mib, round1(float64(sl.ConfirmedLagBytes)/(1<<20)))
		}
	}()
	return func() []float64 { cancel(); <-done; return mib }
}

// fillDelivered writes n rows in bulk, has a relay of its own drain them
// as the backlog measure does, then analyzes the table: its statistics
// then say that almost nothing is pending, as a production outbox's do
// when a burst comes.
func (b *bench) fillDelivered(ctx context.Context, db *database, n int) error {
	if _, err := writeBacklog(ctx, db, n); err != nil {
		return err
	}
	b.runner.Reset(false, n)
	p, err := b.startRelay(ctx, db, backlogMode, fmt.Sprintf("overload, %s rows to warm the table", thousands(n)))
	if err != nil {
		return err
	}
	defer p.stop()
	ok, err := b.runner.WaitDistinct(ctx, n, b.plan.DrainLimit)
	if err == nil && !ok {
		err = fmt.Errorf("warm table: %d of %d rows delivered within %s", b.runner.Counts().Distinct, n, b.plan.DrainLimit)
	}
	if err == nil {
		_, err = db.pool.Exec(ctx, "ANALYZE "+table)
	}
	return err
}

// judge fills r from the first receipts of the overload's events (hot)
// and of the normal load's after it (calm).
func (r *overloadRun) judge(hot, calm []sent, got map[string]time.Time, start, end int64, capacity float64) {
	for _, s := range hot {
		if at, ok := got[s.id]; !ok {
			r.Lost++
		} else if since(at) > end {
			r.DrainedSeconds = max(r.DrainedSeconds, float64(since(at)-end)/1e9)
		} else {
			continue
		}
		r.Backlog++
	}
	r.Goodput = float64(len(hot)-r.Backlog) / (float64(end-start) / 1e9)
	r.Share = r.Goodput / capacity
	// Each calm event's commit, s after the overload, and latency, ms; a
	// missing one counts at the wait, so no window holding it is normal.
	missing := float64(lostWait.Milliseconds())
	var at, ms []float64
	for _, s := range calm {
		l := missing
		if t, ok := got[s.id]; ok {
			l = float64(since(t)-s.at) / 1e6
		} else {
			r.Lost++
		}
		at, ms = append(at, float64(s.at-end)/1e9), append(ms, l)
	}
	p99 := func(from float64) float64 {
		var w []float64
		for i, t := range at {
			if t >= from && t < from+1 {
				w = append(w, ms[i])
			}
		}
		if len(w) == 0 { // no commit in a whole second: no sign of normal
			return missing
		}
		slices.Sort(w)
		return quantile(w, 99)
	}
	for k := 0.0; k+1 <= r.Normal.Seconds; k++ {
		r.P99s = append(r.P99s, round1(p99(k)))
	}
	bound := recoveryFactor * r.Steady.P99
	for t := 0.0; t+3 <= r.Normal.Seconds; t += 0.1 {
		if p99(t) <= bound && p99(t+1) <= bound && p99(t+2) <= bound {
			r.RecoverySeconds, r.Recovered = math.Round(t*10)/10, true
			return
		}
	}
}

// recoveryCell is the recovery in seconds, or that there was none.
func (r overloadRun) recoveryCell() string {
	if !r.Recovered {
		return fmt.Sprintf("not within %s s", num(r.Normal.Seconds))
	}
	return num(r.RecoverySeconds) + " s"
}

func round1(v float64) float64 { return math.Round(v*10) / 10 }

func (r overloadRun) maxLag() float64 { return slices.Max(append(slices.Clip(r.LagMiB), 0)) }

// overloadRuns are the overload's tables when it ran.
func (r *results) overloadRuns() []overloadRun {
	if o := r.Overload; o != nil {
		return o.Runs
	}
	return nil
}

func goodputGoal(r *results, g goal) target {
	t := unmeasured("goodput while twice the capacity is offered, worst table", fmt.Sprintf("≥ %.0f %% of capacity", 100*g.limit))
	runs := r.overloadRuns()
	if len(runs) == 0 {
		return t
	}
	worst := slices.MinFunc(runs, func(a, b overloadRun) int { return cmp.Compare(a.Share, b.Share) })
	t.Measured = fmt.Sprintf("%s of %s events/s (%.0f %%, %s table)", thousands(int(worst.Goodput)), thousands(int(r.Overload.Capacity)), 100*worst.Share, worst.Table)
	t.Verdict = verdictAtLeast(worst.Share, g.limit)
	return t
}

func keptGoal(r *results, _ goal) target {
	t := unmeasured("events lost / sent twice in the overload, all tables", "0 / 0")
	runs := r.overloadRuns()
	if len(runs) == 0 {
		return t
	}
	lost, dup := 0, 0
	for _, x := range runs {
		lost, dup = lost+x.Lost, dup+x.Duplicates
	}
	if t.Measured, t.Verdict = fmt.Sprintf("%d / %d", lost, dup), "✓"; lost+dup > 0 {
		t.Verdict = "✗"
	}
	return t
}

func recoveryGoal(r *results, g goal) target {
	t := unmeasured(fmt.Sprintf("p99 back within %.0f× its steady value after the overload", recoveryFactor), fmt.Sprintf("≤ %.0f s after its backlog is delivered", g.limit))
	runs := r.overloadRuns()
	if len(runs) == 0 {
		return t
	}
	var recov []string
	t.Verdict = "✓"
	for _, x := range runs {
		recov = append(recov, fmt.Sprintf("%s table: backlog delivered after %s s, p99 normal after %s", x.Table, num(x.DrainedSeconds), x.recoveryCell()))
		if !x.Recovered || x.RecoverySeconds > x.DrainedSeconds+g.limit {
			t.Verdict = "✗"
		}
	}
	t.Measured = strings.Join(recov, "; ")
	return t
}

// overloadTable is one row per table.
func overloadTable(r *results) string {
	o := r.Overload
	if o == nil {
		return ""
	}
	return mdTable("| table | capacity events/s | offered / committed events/s | goodput events/s | of capacity | backlog at its end | delivered after s | steady p99 ms | p99 normal after | stream WAL lag max MiB | lost | dup | via stream / sweep | CPU s: relay / Postgres / harness / other | machine busy | while offered: CPU s, busy |\n",
		"|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|---|--:|---|\n",
		o.Runs, func(x overloadRun) string {
			name := x.Table
			if x.Delivered > 0 {
				name += fmt.Sprintf(" (%s delivered rows, analyzed)", thousands(x.Delivered))
			}
			return fmt.Sprintf("| %s | %s | %s / %s | %s | %.0f %% | %s | %s | %s | %s | %s | %d | %d | %s / %s | %s | %.0f %% | %s, %.0f %% |\n",
				name, thousands(int(o.Capacity)), thousands(x.Offered), thousands(int(x.Overload.AchievedRate)), thousands(int(x.Goodput)),
				100*x.Share, thousands(x.Backlog), num(x.DrainedSeconds), num(x.Steady.P99), x.recoveryCell(), num(x.maxLag()),
				x.Lost, x.Duplicates, thousands(int(x.Stream)), thousands(int(x.Sweep)), cpuCell(x.CPU), 100*x.CPU.Busy, cpuCell(x.OfferedCPU), 100*x.OfferedCPU.Busy)
		})
}

// mdOverload is the section on overload.
func mdOverload(b *markdown, r *results) {
	o := r.Overload
	if !b.section("## 7. Overload: twice the capacity, then the normal rate", o != nil) {
		return
	}
	pl := r.Plan
	b.w("Capacity is the median events/s of %d run(s) of the throughput measure's %s single-row transactions, delivered by the stream on a table of their own. Then, per table, one stream relay (`RELAY_SWEEP_INTERVAL=1m`) takes %s events/s from %d connections for %s after a %s warm-up (the steady p99), then twice the capacity from %d connections for %s (the inserts they cannot start by then are not made), then %s events/s again for %s or, when the backlog needs longer to drain at the overload's goodput, until %.0f s past that (at most 2 minutes). *Fresh* is an empty table; *warm* holds %s rows written while no relay ran and drained by another relay (as in section 3), then `ANALYZE`d. Goodput counts the overload's events first received while it was offered. The p99 is normal from the first moment after the overload from which, for three 1 s windows in a row, the events committed in each have a p99 within %.0f× the steady p99. The stream's WAL lag is the slot's `pg_current_wal_lsn() - confirmed_flush_lsn`. Lost: not received %s after the last commit. CPU is counted from the overload's start to the last receipt, and again while the overload is offered: how much of the machine the load left to the relay.\n\n",
		len(o.CapacityRuns), thousands(pl.SingleN), thousands(o.NormalRate), pl.LatencyConns, pl.LatencyDuration, pl.LatencyWarmup,
		pl.SingleConns, pl.OverloadDuration, thousands(o.NormalRate), pl.OverloadNormal, limitOf("overload.recovery")+3, thousands(pl.OverloadWarmRows), recoveryFactor, lostWait)
	b.w("%s\n", overloadTable(r))
	for _, x := range o.Runs {
		b.w("%s table: the p99 of the events committed in each second after the overload, ms: %s. The stream's WAL lag each second from the overload's start, MiB: %s.\n\n",
			x.Table, strings.Trim(fmt.Sprint(x.P99s), "[]"), strings.Trim(fmt.Sprint(x.LagMiB), "[]"))
	}
	b.w("The targets: goodput at least %.0f %% of capacity, since the overload's inserts share the cores with the relay and PostgreSQL for its whole length, where a burst's inserts stop after a few seconds; nothing lost and nothing sent twice, since nothing crashed; and the p99 normal at most %.0f s after the overload's last event is delivered. The backlog (offered minus goodput, for %s) takes what it takes at the relay's capacity, so a bound counted from the overload's end would judge the load; what the relay decides is whether the events after it still wait once the backlog is gone.\n\n",
		100*limitOf("overload.goodput"), limitOf("overload.recovery"), pl.OverloadDuration)
}
