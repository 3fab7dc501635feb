package main

import (
	"context"
	"fmt"
)

// orderingResult compares delivery in order per key (RELAY_COLUMNS=
// ordering_key=entity) with delivery in any order, both measured in this
// measure so that they ran under the same conditions, by the stream.
type orderingResult struct {
	// Unordered and Ordered are the same single-row load, the ordered one
	// spread over Keys keys, each written by one connection.
	Keys      int              `json:"keys"`
	Unordered throughputResult `json:"unordered"`
	Ordered   throughputResult `json:"ordered"`
	Ratio     float64          `json:"ordered_to_unordered"`
	// HotUnordered and HotOrdered are commit → receipt at HotRate from one
	// connection, the ordered rows all of one key: each waits for the
	// outcome of the one before it.
	HotRate      int           `json:"hot_rate"`
	HotUnordered latencyResult `json:"hot_unordered"`
	HotOrdered   latencyResult `json:"hot_ordered"`
	HotRatio     float64       `json:"hot_p50_ratio"`
}

// ordering runs the comparison: for each of an unordered and an ordered
// table, the throughput load and then the hot key's paced load.
func (b *bench) ordering(ctx context.Context) (*orderingResult, error) {
	res := &orderingResult{Keys: b.plan.OrderedKeys, HotRate: b.plan.HotKeyRate}
	for _, ordered := range []bool{false, true} {
		name, keys, key, env := "unordered", 0, "", []string(nil)
		if ordered {
			name, keys, key, env = "ordered", res.Keys, "hot", []string{"RELAY_COLUMNS=ordering_key=entity"}
		}
		db, err := b.newDB(ctx, "ordering_"+name, env...)
		if err != nil {
			return res, err
		}
		tp, hot, err := b.orderingRuns(ctx, db, name, keys, key)
		b.dropDB(db)
		if ordered {
			res.Ordered, res.HotOrdered = tp, hot
		} else {
			res.Unordered, res.HotUnordered = tp, hot
		}
		if err != nil {
			return res, err
		}
	}
	if res.Unordered.EventsPerSec > 0 {
		res.Ratio = res.Ordered.EventsPerSec / res.Unordered.EventsPerSec
	}
	if p := res.HotUnordered.Latency.P50; p > 0 {
		res.HotRatio = res.HotOrdered.Latency.P50 / p
	}
	b.logf("ordering: %s keys %.0f events/s = %.0f %% of unordered %.0f; hot key at %d/s p50 %.2f ms = %.2f× unordered %.2f ms",
		thousands(res.Keys), res.Ordered.EventsPerSec, 100*res.Ratio, res.Unordered.EventsPerSec,
		res.HotRate, res.HotOrdered.Latency.P50, res.HotRatio, res.HotUnordered.Latency.P50)
	return res, nil
}

// orderingRuns measures one table: the throughput of single-row txns
// (over keys keys), then the latency of one connection writing key.
func (b *bench) orderingRuns(ctx context.Context, db *database, name string, keys int, key string) (throughputResult, latencyResult, error) {
	l := load{kind: "single", n: b.plan.SingleN, keys: keys}
	tp, err := b.throughputRun(ctx, db, streamMode, l)
	tp.Mode = "stream, " + name
	if err != nil {
		return tp, latencyResult{}, fmt.Errorf("%s, %s: %w", name, l, err)
	}
	b.logf("ordering %-9s %-38s %6.2f s, %6.0f events/s (stream %.0f, sweep %.0f)", name, l, tp.DeliverSeconds, tp.EventsPerSec, tp.Stream, tp.Sweep)
	p, err := b.startRelay(ctx, db, streamMode, "ordering latency, "+name)
	if err != nil {
		return tp, latencyResult{}, err
	}
	defer p.stop()
	hot, err := b.latencyAt(ctx, db, p, streamMode, pace{rate: b.plan.HotKeyRate, conns: 1, key: key})
	hot.Mode = "stream, " + name
	if err != nil {
		return tp, hot, fmt.Errorf("%s, hot key: %w", name, err)
	}
	b.logf("ordering %-9s one key at %d/s: p50 %.2f ms, p99 %.2f ms, %d missing", name, b.plan.HotKeyRate, hot.Latency.P50, hot.Latency.P99, hot.Missing)
	return tp, hot, nil
}

// orderingMeasured is the comparison when both tables ran.
func (r *results) orderingMeasured() *orderingResult {
	if o := r.Ordering; o != nil && o.Ratio != 0 {
		return o
	}
	return nil
}

func orderedShareGoal(r *results, g goal) target {
	t := unmeasured("ordered throughput, single-row txns over 1,000 keys", fmt.Sprintf("≥ %.0f %% of unordered", 100*g.limit))
	if o := r.orderingMeasured(); o != nil {
		t.What = fmt.Sprintf("ordered throughput, %s single-row txns over %s keys", thousands(o.Ordered.Events), thousands(o.Keys))
		t.Measured = fmt.Sprintf("%s vs %s events/s (%.0f %%)", thousands(int(o.Ordered.EventsPerSec)), thousands(int(o.Unordered.EventsPerSec)), 100*o.Ratio)
		t.Verdict = verdictAtLeast(o.Ratio, g.limit)
	}
	return t
}

func hotKeyGoal(r *results, g goal) target {
	t := unmeasured("one hot key at 100 events/s, p50 commit → receipt", fmt.Sprintf("≤ %.0f× the unordered p50", g.limit))
	if o := r.orderingMeasured(); o != nil && o.HotRatio > 0 {
		t.What = fmt.Sprintf("one hot key at %d events/s, p50 commit → receipt", o.HotRate)
		t.Measured = fmt.Sprintf("%s vs %s ms (%.2f×)", num(o.HotOrdered.Latency.P50), num(o.HotUnordered.Latency.P50), o.HotRatio)
		t.Verdict = verdictAtMost(o.HotRatio, g.limit)
	}
	return t
}

// mdOrdering is the section on ordered delivery.
func mdOrdering(b *markdown, r *results) {
	o := r.Ordering
	if !b.section("## 6. Ordered delivery per key", o != nil) {
		return
	}
	b.w("The same loads on a table without and with an ordering key (`RELAY_COLUMNS=ordering_key=entity`), by the stream, one after the other in this run. Throughput: %s single-row transactions from %d connections as fast as they go, the ordered rows over %s keys, each key written by one connection (the ordering contract). Hot key: %d events/s from one connection for %s after a %s warm-up, the ordered rows all of one key, so each waits for the outcome of the one before it.\n\n",
		thousands(r.Plan.SingleN), r.Plan.SingleConns, thousands(o.Keys), o.HotRate, r.Plan.LatencyDuration, r.Plan.LatencyWarmup)
	b.w("| table | events/s | delivered in s | via stream / sweep | hot key p50 ms | p95 ms | p99 ms | max ms | missing |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, x := range []struct {
		t throughputResult
		l latencyResult
	}{{o.Unordered, o.HotUnordered}, {o.Ordered, o.HotOrdered}} {
		d := x.l.Latency
		b.w("| %s | %s | %s | %s / %s | %s | %s | %s | %s | %d |\n", x.t.Mode, thousands(int(x.t.EventsPerSec)), num(x.t.DeliverSeconds),
			thousands(int(x.t.Stream)), thousands(int(x.t.Sweep)), d.cell(d.P50), d.cell(d.P95), d.cell(d.P99), d.cell(d.Max), x.l.Missing)
	}
	b.w("\nRows of an ordered key that the stream hands over while the key's previous row is in flight are claimed when its outcome is written (path `next`), so they count as neither stream nor sweep here.\n\n")
}
