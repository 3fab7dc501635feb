package main

import "fmt"

// The report's two tables of targets; a goal may be in both.
const (
	summaryTargets = 1 << iota // "Targets: latency, throughput, ordering, overload"
	limitTargets               // "Targets: the stream at its limit"
)

// goal is one target: the metric it judges, its limit (and slack, where
// the goal has one), the tables it is in, and the judge in the measure's
// file that reads this run's results.
type goal struct {
	metric       string
	tables       int
	limit, slack float64
	judge        func(r *results, g goal) target
}

// goals are every target of the run, keyed by metric, in the order of the
// report's tables.
var goals = []goal{
	{metric: "latency.stream.p50.500", tables: summaryTargets, limit: 1.5, judge: latencyGoal(500, "p50")},          // ms
	{metric: "latency.stream.p99.500", tables: summaryTargets, limit: 5, judge: latencyGoal(500, "p99")},            // ms
	{metric: "latency.stream.p99.5000", tables: summaryTargets, limit: 25, judge: latencyGoal(5000, "p99")},         // ms
	{metric: "throughput.bulk.20000", tables: summaryTargets, limit: 15_000, judge: throughputGoal("bulk", 20_000)}, // events/s
	{metric: "throughput.single", tables: summaryTargets, limit: 10_000, judge: throughputGoal("single", 0)},        // events/s
	{metric: "backlog.drain", tables: summaryTargets, limit: 10_000, judge: drainGoal},                              // events/s
	{metric: "backlog.sweep_flat", tables: summaryTargets, limit: 2, slack: 0.5, judge: sweepGoal},                  // × the small table's ms, + ms
	{metric: "relay.peak_rss", tables: summaryTargets | limitTargets, limit: 48, judge: rssGoal},                    // MiB
	{metric: "wal.lag", tables: summaryTargets, limit: 16 << 20, judge: lagGoal},                                    // bytes
	{metric: "wal.retained", tables: summaryTargets, limit: 16 << 20, judge: retainedGoal},                          // bytes
	{metric: "ordering.share", tables: summaryTargets, limit: 0.70, judge: orderedShareGoal},                        // of unordered events/s
	{metric: "ordering.hot_p50", tables: summaryTargets, limit: 2, judge: hotKeyGoal},                               // × the unordered p50
	{metric: "overload.goodput", tables: summaryTargets, limit: 0.80, judge: goodputGoal},                           // of capacity
	{metric: "overload.kept", tables: summaryTargets, judge: keptGoal},                                              // lost / sent twice
	{metric: "overload.recovery", tables: summaryTargets, limit: 10, judge: recoveryGoal},                           // s after the backlog
	{metric: "burst.min_rate", tables: limitTargets, limit: 8_000, judge: burstRateGoal},                            // events/s
	{metric: "burst.max_latency", tables: limitTargets, limit: 5_000, judge: burstLatencyGoal},                      // ms
	{metric: "throughput.stream.bulk.20000", tables: limitTargets, limit: 15_000, judge: bulkStreamGoal},            // events/s
	{metric: "throughput.stream_vs_sweep", tables: limitTargets, limit: 1, judge: streamVsSweepGoal},                // ratio
	{metric: "latency.stream.p50.500.limit", tables: limitTargets, limit: 0.25, judge: latencyGoal(500, "p50")},     // ms
	{metric: "latency.stream.p99.500.limit", tables: limitTargets, limit: 0.6, judge: latencyGoal(500, "p99")},      // ms
	{metric: "latency.stream.p99.2000.limit", tables: limitTargets, limit: 3, judge: latencyGoal(2000, "p99")},      // ms
	{metric: "cpu.relay.500", tables: limitTargets, limit: 250, judge: cpuGoal("relay")},                            // µs per event
	{metric: "cpu.postgres.500", tables: limitTargets, limit: 400, judge: cpuGoal("PostgreSQL")},                    // µs per event
	{metric: "work.500", tables: limitTargets, judge: workGoal},                                                     // reported
	{metric: "burst.insert_share", tables: limitTargets, limit: 0.85, judge: insertShareGoal},                       // of the rate alone
}

// limitOf is the limit of metric's goal, for the tables and measures that
// show or use it.
func limitOf(metric string) float64 {
	for _, g := range goals {
		if g.metric == metric {
			return g.limit
		}
	}
	panic("bench: no goal for " + metric)
}

// target is one line of a targets table.
type target struct {
	What, Goal, Measured, Verdict string
}

// unmeasured is a target with nothing measured yet.
func unmeasured(what, goal string) target {
	return target{What: what, Goal: goal, Measured: "not measured", Verdict: "–"}
}

// targets are the goals of one table, each judged on what this run
// measured.
func (r *results) targets(table int) []target {
	var out []target
	for _, g := range goals {
		if g.tables&table != 0 {
			out = append(out, g.judge(r, g))
		}
	}
	return out
}

func targetsTable(r *results, table int) string {
	return mdTable("| target | goal | measured | |\n", "|---|---|---|---|\n", r.targets(table), func(t target) string {
		return fmt.Sprintf("| %s | %s | %s | %s |\n", t.What, t.Goal, t.Measured, t.Verdict)
	})
}

func verdictAtMost(v, limit float64) string {
	if v <= limit {
		return "✓"
	}
	return fmt.Sprintf("✗ (%.1f× the limit)", v/limit)
}

// verdictBelow is verdictAtMost for a goal that excludes its limit.
func verdictBelow(v, limit float64) string {
	if v < limit {
		return "✓"
	}
	return fmt.Sprintf("✗ (%.1f× the limit)", v/limit)
}

func verdictAtLeast(v, floor float64) string {
	if v >= floor {
		return "✓"
	}
	return fmt.Sprintf("✗ (%.0f %% of the target)", 100*v/floor)
}

// atLeastCell is the goal and verdict cells of a table row judged on v.
func atLeastCell(v, floor float64) (goal, verdict string) {
	return "≥ " + thousands(int(floor)), verdictAtLeast(v, floor)
}
