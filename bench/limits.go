package main

import (
	"fmt"
	"strings"
)

// Targets of the stream at its limit, and of less database work
// per event.
const (
	targetLimitBurstRate   = 8_000  // events/s, the slowest of the repeated bursts
	targetLimitBurstMaxMs  = 5_000  // commit → receipt of any event of any burst
	targetLimitBulkRate    = 15_000 // events/s, INSERT … SELECT of 20,000 rows by the stream
	targetLimitP50At500    = 0.25   // ms
	targetLimitP99At500    = 0.6    // ms
	targetLimitP99At2000   = 3.0    // ms
	targetLimitRelayCPU    = 250    // µs per event at 500/s
	targetLimitPostgresCPU = 400    // µs per event at 500/s, the load's inserts included
	targetLimitInsertShare = 0.85   // of the load's insert rate with no relay
)

// limitTargets are the goals of the stream at its limit, each judged on
// what this run measured.
func (r *results) limitTargets() []target {
	p50 := func(d distribution) float64 { return d.P50 }
	p99 := func(d distribution) float64 { return d.P99 }
	return []target{
		r.burstRateTarget(),
		r.burstLatencyTarget(),
		r.bulkStreamTarget(),
		r.streamVsSweepTarget(),
		r.latencyTarget(500, "p50", targetLimitP50At500, p50),
		r.latencyTarget(500, "p99", targetLimitP99At500, p99),
		r.latencyTarget(2000, "p99", targetLimitP99At2000, p99),
		r.cpuTarget("relay", targetLimitRelayCPU, func(c cpuUse) float64 { return c.Relay }),
		r.cpuTarget("PostgreSQL", targetLimitPostgresCPU, func(c cpuUse) float64 { return c.Postgres }),
		r.workTarget(),
		r.insertRateTarget(),
		r.rssTarget(),
	}
}

// burstMeasured is the repeated burst when it ran.
func (r *results) burstMeasured() *burstResult {
	if u := r.Burst; u != nil && u.Skipped == "" && len(u.Runs) > 0 {
		return u
	}
	return nil
}

func (r *results) burstRateTarget() target {
	t := target{What: "slowest of the repeated bursts of single-row txns (stream)", Goal: fmt.Sprintf("≥ %s events/s", thousands(targetLimitBurstRate)),
		Measured: "not measured", Verdict: "–"}
	if u := r.burstMeasured(); u != nil {
		t.What = fmt.Sprintf("slowest of %d runs of %s single-row txns (stream)", len(u.Runs), thousands(u.Events))
		t.Measured = fmt.Sprintf("min / median / max: %s / %s / %s events/s", thousands(int(u.MinRate)), thousands(int(u.MedianRate)), thousands(int(u.MaxRate)))
		t.Verdict = verdictAtLeast(u.MinRate, targetLimitBurstRate)
	}
	return t
}

func (r *results) burstLatencyTarget() target {
	t := target{What: "no event of a burst waits for a sweep (`RELAY_SWEEP_INTERVAL=1m`): max commit → receipt", Goal: fmt.Sprintf("< %s ms", thousands(targetLimitBurstMaxMs)),
		Measured: "not measured", Verdict: "–"}
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
		t.Verdict = verdictBelow(u.MaxLatencyMs, targetLimitBurstMaxMs)
	}
	return t
}

// verdictBelow is verdictAtMost for a goal that excludes its limit.
func verdictBelow(v, limit float64) string {
	if v < limit {
		return "✓"
	}
	return fmt.Sprintf("✗ (%.1f× the limit)", v/limit)
}

// throughputIn is the throughput of load kind/n in mode, when measured.
func (r *results) throughputIn(mode, loadName string) *throughputResult {
	for i := range r.Throughput {
		if t := &r.Throughput[i]; t.Mode == mode && t.Load == loadName && t.Skipped == "" && t.EventsPerSec > 0 {
			return t
		}
	}
	return nil
}

func (r *results) bulkStreamTarget() target {
	l := load{kind: "bulk", n: 20_000}.String()
	t := target{What: l + " (stream)", Goal: fmt.Sprintf("≥ %s events/s", thousands(targetLimitBulkRate)), Measured: "not measured", Verdict: "–"}
	if x := r.throughputIn(streamMode.Name, l); x != nil {
		t.Measured, t.Verdict = fmt.Sprintf("%s events/s", thousands(int(x.EventsPerSec))), verdictAtLeast(x.EventsPerSec, targetLimitBulkRate)
	}
	return t
}

// streamVsSweepTarget compares the modes on every load both ran, and
// shows the one where the stream fared worst.
func (r *results) streamVsSweepTarget() target {
	t := target{What: "stream never slower than sweep-only, same load", Goal: "≥ 100 % of sweep-only", Measured: "not measured", Verdict: "–"}
	worst := 0.0
	for _, s := range r.Throughput {
		if s.Mode != streamMode.Name || s.Skipped != "" || s.EventsPerSec <= 0 {
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
			t.Verdict = verdictAtLeast(ratio, 1)
		}
	}
	return t
}

// perEventMicros is CPU seconds per committed event, in µs.
func perEventMicros(seconds float64, events int) float64 {
	return 1e6 * seconds / float64(max(events, 1))
}

func (r *results) cpuTarget(who string, limit float64, get func(cpuUse) float64) target {
	t := target{What: who + " CPU per event at 500 events/s (stream)", Goal: fmt.Sprintf("≤ %.0f µs", limit), Measured: "not measured", Verdict: "–"}
	if who == "PostgreSQL" {
		t.What += ", the load's inserts included"
	}
	if l := r.latencyOf(streamMode.Name, 500); l != nil && l.Load.Committed > 0 {
		v := perEventMicros(get(l.CPU), l.Load.Committed)
		t.Measured, t.Verdict = fmt.Sprintf("%.0f µs", v), verdictAtMost(v, limit)
		if f := r.floorAt(floorRate, "1"); who == "relay" && f != nil {
			t.Measured += fmt.Sprintf(" (a bare Go client, one POST every 2 ms on one P: %.0f µs)", f.MicrosPerPost())
		}
	}
	return t
}

// floorAt is the bare client's run at rate with that GOMAXPROCS.
func (r *results) floorAt(rate int, procs string) *floorResult {
	for i, f := range r.Floor {
		if f.Rate == rate && f.GOMAXPROCS == procs && f.Posts > 0 {
			return &r.Floor[i]
		}
	}
	return nil
}

// mdFloor says what the bare client cost, next to the relay at its rate.
func mdFloor(b *markdown, r *results) {
	one, all := r.floorAt(floorRate, "1"), r.floorAt(floorRate, "default")
	l := r.latencyOf(streamMode.Name, floorRate)
	if one == nil || l == nil || l.Load.Committed == 0 {
		return
	}
	b.w("\n### The floor at 500 events/s\n\n")
	b.w("What a Go process spends to do nothing but send one POST per event at that rate: the harness runs itself again as a bare `net/http` client (keep-alive, a typical event's body and headers, no database, no signing) that POSTs to the same runner every 2 ms for %.0f s after a second's warm-up, and reads its own CPU time. It costs %.0f µs per POST on one P", one.Seconds, one.MicrosPerPost())
	if all != nil {
		b.w(" and %.0f µs on the runtime's default Ps", all.MicrosPerPost())
	}
	relay := perEventMicros(l.CPU.Relay, l.Load.Committed)
	b.w(". The relay spent %.0f µs per event at the same rate: that POST, plus receiving the event from the replication stream and its share of an outcome `UPDATE`, %.0f µs more than the floor. Most of the floor is waking up: the runtime's monitor thread and the thread that waits for the network sleep and wake around every event, and on a virtual machine each of those switches costs the hypervisor's work too; so the relay's CPU per event at a low rate says as much about the machine as about the relay.\n", relay, relay-one.MicrosPerPost())
}

func (r *results) workTarget() target {
	t := target{What: "statements and row versions per event at 500 events/s (stream)", Goal: "reported", Measured: "not measured", Verdict: "–"}
	l := r.latencyOf(streamMode.Name, 500)
	if l == nil {
		return t
	}
	if w := l.Work; w != nil {
		t.Measured = fmt.Sprintf("%s row versions (%s)", num(w.RowVersionsPerEvent()), versionsCell(w))
		t.Verdict = "✓"
		if w.StatementsCounted {
			t.Measured = fmt.Sprintf("%s relay statements, ", num(w.StatementsPerEvent())) + t.Measured
		} else {
			t.Measured += "; statements not counted (no pg_stat_statements)"
			t.Verdict = "✗ (statements not counted)"
		}
	} else {
		t.Verdict = "✗ (not measured)"
	}
	return t
}

func (r *results) insertRateTarget() target {
	t := target{What: "the load's insert rate next to the relay, single-row txns", Goal: fmt.Sprintf("≥ %.0f %% of its rate alone", 100*targetLimitInsertShare),
		Measured: "not measured", Verdict: "–"}
	if u := r.burstMeasured(); u != nil && u.AloneInsertRate > 0 {
		t.Measured = fmt.Sprintf("%s vs %s rows/s alone (%.0f %%)", thousands(int(u.InsertRate)), thousands(int(u.AloneInsertRate)), 100*u.InsertRate/u.AloneInsertRate)
		t.Verdict = verdictAtLeast(u.InsertRate/u.AloneInsertRate, targetLimitInsertShare)
	}
	return t
}

// versionsCell splits row versions per event into the table's counters.
func versionsCell(w *dbWork) string {
	return fmt.Sprintf("ins %s + upd %s (HOT %s) + del %s",
		num(w.perEvent(w.Inserted)), num(w.perEvent(w.Updated)), num(w.perEvent(w.HotUpdated)), num(w.perEvent(w.Deleted)))
}

func limitTargetsTable(r *results) string {
	return mdTable("| target | goal | measured | |\n", "|---|---|---|---|\n", r.limitTargets(), func(t target) string {
		return fmt.Sprintf("| %s | %s | %s | %s |\n", t.What, t.Goal, t.Measured, t.Verdict)
	})
}

// workRow is one line of the per-event table.
type workRow struct {
	measure, mode, load string
	events              int     // the CPU's events
	relay, postgres     float64 // CPU seconds
	work                *dbWork
}

func (r *results) workRows() []workRow {
	var rows []workRow
	for _, l := range r.Latency {
		if l.Skipped == "" && l.Load.Committed > 0 {
			rows = append(rows, workRow{"latency", l.Mode, thousands(l.Rate) + " events/s", l.Load.Committed, l.CPU.Relay, l.CPU.Postgres, l.Work})
		}
	}
	for _, t := range r.Throughput {
		if t.Skipped == "" && t.Events > 0 {
			rows = append(rows, workRow{"throughput", t.Mode, t.Load, t.Events, t.CPU.Relay, t.CPU.Postgres, t.Work})
		}
	}
	if u := r.burstMeasured(); u != nil {
		row := workRow{measure: "burst", mode: streamMode.Name, load: fmt.Sprintf("%s, %d runs", load{kind: "single", n: u.Events}, len(u.Runs)), work: u.Work}
		for _, x := range u.Runs {
			row.events += x.Load.Committed
			row.relay += x.CPU.Relay
			row.postgres += x.CPU.Postgres
		}
		rows = append(rows, row)
	}
	return rows
}

func workTable(r *results) string {
	return mdTable("| measure | mode | load | relay CPU µs/event | PostgreSQL CPU µs/event | relay statements/event | row versions/event | of which per event |\n",
		"|---|---|---|--:|--:|--:|--:|---|\n",
		r.workRows(), func(x workRow) string {
			stmts, versions, split := "–", "–", "not measured"
			if w := x.work; w != nil {
				versions, split = num(w.RowVersionsPerEvent()), versionsCell(w)
				if w.StatementsCounted {
					stmts = num(w.StatementsPerEvent())
				}
			}
			return fmt.Sprintf("| %s | %s | %s | %.0f | %.0f | %s | %s | %s |\n", x.measure, x.mode, x.load,
				perEventMicros(x.relay, x.events), perEventMicros(x.postgres, x.events), stmts, versions, split)
		})
}

// statementsTable is the relay's busiest statements at one latency rate,
// in both modes.
func statementsTable(r *results, rate int) string {
	var b strings.Builder
	for _, m := range modes() {
		l := r.latencyOf(m.Name, rate)
		if l == nil || l.Work == nil || !l.Work.StatementsCounted || len(l.Work.Top) == 0 {
			continue
		}
		if b.Len() == 0 {
			b.WriteString("| mode | calls/event | rows/call | statement (normalised by pg_stat_statements) |\n|---|--:|--:|---|\n")
		}
		for _, s := range l.Work.Top {
			fmt.Fprintf(&b, "| %s | %s | %s | `%s` |\n", m.Name, num(l.Work.perEvent(s.Calls)), num(float64(s.Rows)/float64(max(s.Calls, 1))),
				strings.ReplaceAll(s.Query, "|", `\|`))
		}
	}
	return b.String()
}

// mdWork is the per-event part of the cost section.
func mdWork(b *markdown, r *results) {
	b.w("\n### The database's work per event\n\n")
	b.w("What each event cost, in CPU and in the statements and row versions the relay asked of PostgreSQL. CPU per event is the CPU of the latency or throughput table over its committed events (PostgreSQL's includes the load's inserts). **Statements** are the relay's calls as `pg_stat_statements` counts them (the cluster preloads it): the relay logs in as a role of its own, `%s` (a superuser, as `postgres` is), so its statements are told from the load's inserts and the harness's queries by role and database; `BEGIN` and `COMMIT` count, the stream's replication commands do not. **Row versions** are the outbox table's `n_tup_ins + n_tup_upd + n_tup_del` from `pg_stat_user_tables`, the load's inserts (one per event) included; a backend publishes these counts at most once a second and, once idle, up to 10 s later, so they are read after the relay's backends have exited and after the harness's connections were made to publish (`pg_stat_force_next_flush()`). Each latency rate has a relay of its own for that reason; its statements and row versions cover the warm-up and the run (both at that rate), its CPU the run only. The burst's cover all its runs.\n\n", relayRole)
	b.w("%s", workTable(r))
	if t := statementsTable(r, 500); t != "" {
		b.w("\nThe relay's busiest statements at 500 events/s, per event, over the warm-up and the run:\n\n%s", t)
	}
}
