package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// burstResult is the stream at its limit: one burst of
// single-row transactions, as fast as the load goes, delivered by one
// relay again and again, since a burst that overflows the stream's
// hand-off shows only in some runs; and the load's own insert rate with
// and without that relay running, in the same database.
type burstResult struct {
	Events int `json:"events"` // per run
	// WaitSeconds is how long after the last commit a run waits for its
	// events; one not received by then is missing.
	WaitSeconds float64    `json:"wait_seconds"`
	Runs        []burstRun `json:"runs"`
	// Alone are the same load with no relay running, half before the
	// relay's first run (no slot yet) and half after its last (the slot
	// inactive, so nothing decodes).
	Alone []loadStats `json:"alone"`

	MinRate    float64 `json:"min_events_per_second"`
	MedianRate float64 `json:"median_events_per_second"`
	MaxRate    float64 `json:"max_events_per_second"`
	// MaxLatencyMs is the longest commit → receipt of any run; Censored
	// when some event was missing, so the true maximum is larger.
	MaxLatencyMs float64 `json:"max_latency_ms"`
	Censored     bool    `json:"censored"`
	// InsertRate and AloneInsertRate are the medians of the load's
	// committed rows per second next to the relay and alone.
	InsertRate      float64 `json:"insert_rate"`
	AloneInsertRate float64 `json:"alone_insert_rate"`
}

// burstRun is one delivery of the burst.
type burstRun struct {
	Load loadStats `json:"load"`
	// DeliverSeconds runs from the first insert to the last receipt, or to
	// the end of the wait when the run timed out; EventsPerSec is the
	// events over it (for a timed-out run, more than it really managed).
	DeliverSeconds float64      `json:"deliver_seconds"`
	EventsPerSec   float64      `json:"events_per_second"`
	TimedOut       bool         `json:"timed_out"`
	Missing        int          `json:"missing"`
	Duplicates     int          `json:"duplicates"`
	Latency        distribution `json:"latency"`
	Stream         float64      `json:"stream_delivered"`
	Sweep          float64      `json:"sweep_delivered"`
	CPU            cpuUse       `json:"cpu"`
}

// burst runs the load alone, then with one relay (stream mode, the sweep
// a minute apart so that an event the stream drops shows as late) for
// every run, then alone again. The table is truncated after every run, so
// each starts empty.
func (b *bench) burst(ctx context.Context) (*burstResult, error) {
	n := b.plan.SingleN
	res := &burstResult{Events: n, WaitSeconds: b.plan.BurstWait.Seconds()}
	db, err := b.newDB(ctx, "burst")
	if err != nil {
		return res, err
	}
	defer b.dropDB(db)
	if err := b.burstAlone(ctx, db, b.plan.BurstAlone-b.plan.BurstAlone/2, res); err != nil {
		return res, err
	}
	l := load{kind: "single", n: n}
	p, err := b.startRelay(ctx, db, streamMode, fmt.Sprintf("burst, stream, %s ×%d", l, b.plan.BurstRuns))
	if err != nil {
		return res, err
	}
	for i := range b.plan.BurstRuns {
		r, err := b.burstRun(ctx, db, p)
		res.Runs = append(res.Runs, r)
		if err != nil {
			p.stop()
			return res, fmt.Errorf("run %d: %w", i+1, err)
		}
		b.logf("burst %2d: inserts %6.0f/s; delivered in %5.2f s, %6.0f events/s; max %.0f ms, %d missing (stream %.0f, sweep %.0f)",
			i+1, r.Load.AchievedRate, r.DeliverSeconds, r.EventsPerSec, r.Latency.Max, r.Missing, r.Stream, r.Sweep)
	}
	p.stop()
	if err := b.burstAlone(ctx, db, b.plan.BurstAlone/2, res); err != nil {
		return res, err
	}
	res.summarise()
	b.logf("burst: events/s min %.0f, median %.0f, max %.0f; max commit → receipt %.0f ms; inserts %.0f/s next to the relay, %.0f/s alone",
		res.MinRate, res.MedianRate, res.MaxRate, res.MaxLatencyMs, res.InsertRate, res.AloneInsertRate)
	return res, nil
}

// burstAlone runs the load k times with no relay running.
func (b *bench) burstAlone(ctx context.Context, db *database, k int, res *burstResult) error {
	for range k {
		b.waitQuiet(ctx, b.quiet)
		_, st, err := flood(ctx, db.pool, res.Events, b.plan.SingleConns, 0)
		res.Alone = append(res.Alone, st)
		if err != nil {
			return fmt.Errorf("alone: %w", err)
		}
		b.logf("burst alone: inserts %6.0f/s", st.AchievedRate)
		if err := truncate(ctx, db); err != nil {
			return err
		}
	}
	return nil
}

// burstRun delivers the burst once through the running relay p.
func (b *bench) burstRun(ctx context.Context, db *database, p *relayProc) (burstRun, error) {
	var r burstRun
	n := b.plan.SingleN
	b.waitQuiet(ctx, b.quiet)
	b.runner.Reset(true, n)
	before, _ := p.deliveries()
	cpu0 := b.cpuNow(p)
	start := now()
	sends, st, err := flood(ctx, db.pool, n, b.plan.SingleConns, 0)
	r.Load = st
	if err != nil {
		return r, err
	}
	ok, err := b.runner.WaitDistinct(ctx, len(sends), b.plan.BurstWait)
	if err != nil {
		return r, err
	}
	end := now()
	r.CPU = cpuBetween(cpu0, b.cpuNow(p))
	r.Stream, r.Sweep = p.deliveredSince(before)
	c := b.runner.Counts()
	r.Duplicates = c.Requests - c.Distinct
	var lr latencyResult
	latencies(&lr, sends, b.runner.FirstReceipts(), b.plan.BurstWait)
	r.Latency, r.Missing = lr.Latency, lr.Missing
	r.Latency.CDF = nil // ten runs of it would only bloat the JSON
	r.TimedOut = !ok
	if ok {
		r.DeliverSeconds, _, r.EventsPerSec = receiptRate(c, start)
	} else {
		r.DeliverSeconds = float64(end-start) / 1e9
		r.EventsPerSec = float64(n) / r.DeliverSeconds
	}
	// The next run starts on an empty table, as this one did; rows the
	// relay still holds are gone, and their outcome writes find nothing.
	return r, truncate(ctx, db)
}

// truncate empties the outbox table.
func truncate(ctx context.Context, db *database) error {
	_, err := db.pool.Exec(ctx, "TRUNCATE "+table)
	return err
}

// summarise fills the figures over all runs.
func (res *burstResult) summarise() {
	var rates, inserts, alone []float64
	for _, r := range res.Runs {
		rates = append(rates, r.EventsPerSec)
		inserts = append(inserts, r.Load.AchievedRate)
		res.MaxLatencyMs = max(res.MaxLatencyMs, r.Latency.Max)
		res.Censored = res.Censored || r.Missing > 0
	}
	for _, a := range res.Alone {
		alone = append(alone, a.AchievedRate)
	}
	if len(rates) > 0 {
		res.MinRate, res.MaxRate = slices.Min(rates), slices.Max(rates)
	}
	res.MedianRate, res.InsertRate, res.AloneInsertRate = median(rates), median(inserts), median(alone)
}

// burstTable is the runs, one row each.
func burstTable(r *results) string {
	u := r.Burst
	if u == nil {
		return ""
	}
	var b strings.Builder
	b.WriteString("| run | insert s | inserts/s | delivered in s | events/s | p50 ms | p99 ms | max ms | missing | dup | via stream / sweep | CPU s: relay / Postgres / harness / other | machine busy |\n")
	b.WriteString("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|\n")
	for i, x := range u.Runs {
		d := x.Latency
		events := thousands(int(x.EventsPerSec))
		if x.TimedOut {
			events = "< " + events + " (timed out)"
		}
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s | %s | %s | %d | %d | %s / %s | %s | %.0f %% |\n",
			i+1, num(x.Load.Seconds), thousands(int(x.Load.AchievedRate)), num(x.DeliverSeconds), events,
			d.cell(d.P50), d.cell(d.P99), d.cell(d.Max), x.Missing, x.Duplicates,
			thousands(int(x.Stream)), thousands(int(x.Sweep)), cpuCell(x.CPU), 100*x.CPU.Busy)
	}
	return b.String()
}

// mdBurst is the repeated burst, at the end of section 2.
func mdBurst(b *markdown, r *results) {
	u := r.Burst
	if u == nil {
		return
	}
	b.w("### One burst, %d times, and the load's own insert rate\n\n", len(u.Runs))
	b.w("%s single-row transactions from %d connections as fast as they go, delivered by one relay in stream mode (`RELAY_SWEEP_INTERVAL=1m`, so an event the stream does not deliver waits for a sweep), %d times in a row; the table is truncated after each run. A run's clock starts at its first insert and stops at its last receipt; an event not received %s after the last commit counts as missing, at that wait. ",
		thousands(u.Events), r.Plan.SingleConns, len(u.Runs), time.Duration(u.WaitSeconds*float64(time.Second)))
	b.w("\"inserts/s\" is the load's own rate of commits. The same load also ran %d times with no relay running (half before the relay started, with no slot yet, half after it stopped, the slot inactive), in the same database.\n\n", len(u.Alone))
	b.w("%s\n", burstTable(r))
	maxLat := num(u.MaxLatencyMs) + " ms"
	if u.Censored {
		maxLat = "> " + maxLat + " (events missing)"
	}
	b.w("Events/s min / median / max: %s / %s / %s; max commit → receipt over all runs: %s. ",
		thousands(int(u.MinRate)), thousands(int(u.MedianRate)), thousands(int(u.MaxRate)), maxLat)
	var alone []string
	for _, a := range u.Alone {
		alone = append(alone, thousands(int(a.AchievedRate)))
	}
	b.w("Inserts/s with no relay running: %s (median %s); next to the relay: median %s (%s).\n\n",
		strings.Join(alone, ", "), thousands(int(u.AloneInsertRate)), thousands(int(u.InsertRate)), ratioCell(u.InsertRate, u.AloneInsertRate))
}

// ratioCell is v as a share of ref, "–" without ref.
func ratioCell(v, ref float64) string {
	if ref <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f %% of the rate alone", 100*v/ref)
}

// burstMeasured is the repeated burst when it ran.
func (r *results) burstMeasured() *burstResult {
	if u := r.Burst; u != nil && len(u.Runs) > 0 {
		return u
	}
	return nil
}

func burstRateGoal(r *results, g goal) target {
	t := unmeasured("slowest of the repeated bursts of single-row txns (stream)", fmt.Sprintf("≥ %s events/s", thousands(int(g.limit))))
	if u := r.burstMeasured(); u != nil {
		t.What = fmt.Sprintf("slowest of %d runs of %s single-row txns (stream)", len(u.Runs), thousands(u.Events))
		t.Measured = fmt.Sprintf("min / median / max: %s / %s / %s events/s", thousands(int(u.MinRate)), thousands(int(u.MedianRate)), thousands(int(u.MaxRate)))
		t.Verdict = verdictAtLeast(u.MinRate, g.limit)
	}
	return t
}

func burstLatencyGoal(r *results, g goal) target {
	t := unmeasured("no event of a burst waits for a sweep (`RELAY_SWEEP_INTERVAL=1m`): max commit → receipt", fmt.Sprintf("< %s ms", thousands(int(g.limit))))
	if u := r.burstMeasured(); u != nil {
		t.What += fmt.Sprintf(", all %d runs", len(u.Runs))
		t.Measured = num(u.MaxLatencyMs) + " ms"
		if u.Censored {
			missing := 0
			for _, x := range u.Runs {
				missing += x.Missing
			}
			t.Measured = fmt.Sprintf("> %s ms (%d events missing)", num(u.MaxLatencyMs), missing)
		}
		t.Verdict = verdictBelow(u.MaxLatencyMs, g.limit)
	}
	return t
}

func insertShareGoal(r *results, g goal) target {
	t := unmeasured("the load's insert rate next to the relay, single-row txns", fmt.Sprintf("≥ %.0f %% of its rate alone", 100*g.limit))
	if u := r.burstMeasured(); u != nil && u.AloneInsertRate > 0 {
		t.Measured = fmt.Sprintf("%s vs %s rows/s alone (%.0f %%)", thousands(int(u.InsertRate)), thousands(int(u.AloneInsertRate)), 100*u.InsertRate/u.AloneInsertRate)
		t.Verdict = verdictAtLeast(u.InsertRate/u.AloneInsertRate, g.limit)
	}
	return t
}
