package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// backlogResult is the drain of rows written while the runner was down.
type backlogResult struct {
	Mode          string  `json:"mode"`
	Rows          int     `json:"rows"`
	InsertSeconds float64 `json:"insert_seconds"`
	// DrainSeconds runs from the relay's start to the last receipt.
	DrainSeconds        float64 `json:"drain_seconds"`
	FirstReceiptSeconds float64 `json:"first_receipt_seconds"`
	EventsPerSec        float64 `json:"events_per_second"`
	Received            int     `json:"received"`
	Duplicates          int     `json:"duplicates"`
	TimedOut            bool    `json:"timed_out"`
	CPU                 cpuUse  `json:"cpu"`
	CPUPer10k           float64 `json:"relay_cpu_seconds_per_10k"`
	PeakRSSMiB          float64 `json:"relay_peak_rss_mib"`
}

// sweepCost is the sweep's claim on a table holding Delivered rows.
type sweepCost struct {
	Delivered int `json:"delivered_rows"`
	Pending   int `json:"pending_rows"`
	// ClaimMs is the median wall time of store.ClaimDue, the relay's own
	// claim of 100 due rows, round trip included.
	ClaimMs float64 `json:"claim_due_ms"`
}

// backlogMode drains with the stream on (the production set-up; the
// backlog itself is the sweeper's work) and a 1 s sweep.
var backlogMode = mode{Name: "stream", CDC: "on", Sweep: time.Second}

// backlog drains a small table and the big backlog, and measures the sweep
// on each once it is all delivered.
func (b *bench) backlog(ctx context.Context) ([]backlogResult, []sweepCost, error) {
	var drains []backlogResult
	var costs []sweepCost
	for _, n := range []int{b.plan.SmallTableN, b.plan.BacklogN} {
		r, c, err := b.backlogOf(ctx, n)
		drains = append(drains, r)
		if c != nil {
			costs = append(costs, *c)
		}
		if err != nil {
			return drains, costs, err
		}
	}
	return drains, costs, nil
}

func (b *bench) backlogOf(ctx context.Context, n int) (backlogResult, *sweepCost, error) {
	m := backlogMode
	res := backlogResult{Mode: m.Name, Rows: n}
	db, err := b.newDB(ctx, fmt.Sprintf("backlog_%d", n))
	if err != nil {
		return res, nil, err
	}
	defer b.dropDB(db)

	if res.InsertSeconds, err = writeBacklog(ctx, db, n); err != nil {
		return res, nil, err
	}
	b.logf("backlog: %s pending rows written in %.1f s", thousands(n), res.InsertSeconds)
	c, err := b.drain(ctx, db, m, &res)
	if err != nil {
		return res, nil, err
	}

	// In count-only mode a duplicate shows as a surplus over the rows the
	// table says were delivered.
	var delivered int
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM `+table+` WHERE status = 'delivered'`).Scan(&delivered); err != nil {
		return res, nil, err
	}
	if c.Requests-c.Distinct == 0 && c.Requests > delivered {
		res.Duplicates = c.Requests - delivered
		res.Received = delivered
	}
	cost, err := b.sweepCost(ctx, db, delivered)
	if err != nil {
		return res, nil, fmt.Errorf("sweep cost: %w", err)
	}
	b.logf("sweep claim with %s delivered rows: %.3f ms", thousands(delivered), cost.ClaimMs)
	if res.TimedOut {
		return res, &cost, fmt.Errorf("backlog of %s: only %s delivered within %s", thousands(n), thousands(res.Received), b.plan.DrainLimit)
	}
	return res, &cost, nil
}

// writeBacklog writes n pending rows while no relay runs (the runner is
// "down"), in transactions of at most 100,000 rows, and says how long it
// took in seconds.
func writeBacklog(ctx context.Context, db *database, n int) (float64, error) {
	t := time.Now()
	for left := n; left > 0; left -= 100_000 {
		if err := bulk(ctx, db.pool, min(left, 100_000)); err != nil {
			return 0, err
		}
	}
	return time.Since(t).Seconds(), nil
}

// drain starts a relay on the backlog and times it from its start to the
// last receipt, or to the plan's limit.
func (b *bench) drain(ctx context.Context, db *database, m mode, res *backlogResult) (relaytest.Counts, error) {
	n := res.Rows
	b.waitQuiet(ctx, b.quiet)
	b.runner.Reset(n <= 200_000, n)
	cpu0 := b.cpuNow(nil)
	start := now()
	p, err := b.startRelay(ctx, db, m, fmt.Sprintf("backlog %s, %s", thousands(n), m.Name))
	if err != nil {
		return relaytest.Counts{}, err
	}
	ok, err := b.runner.WaitDistinct(ctx, n, b.plan.DrainLimit)
	cpu1 := b.cpuNow(p)
	st := p.stop()
	if err != nil {
		return relaytest.Counts{}, err
	}
	c := b.runner.Counts()
	res.TimedOut = !ok
	res.Received, res.Duplicates = c.Distinct, c.Requests-c.Distinct
	res.DrainSeconds, res.FirstReceiptSeconds, res.EventsPerSec = receiptRate(c, start)
	// cpu0 had no relay yet: its CPU is all since start.
	res.CPU = cpuBetween(cpu0, cpu1)
	res.CPUPer10k = relayCPUPer10k(res.CPU, c)
	res.PeakRSSMiB = st.PeakRSSMiB
	b.logf("backlog %s: %s received in %.1f s, %.0f events/s, first after %.2f s, relay peak RSS %.1f MiB",
		thousands(n), thousands(res.Received), res.DrainSeconds, res.EventsPerSec, res.FirstReceiptSeconds, res.PeakRSSMiB)
	return c, nil
}

// sweepCost adds pending rows to a drained table (no relay running) and
// times store.ClaimDue on it, in sessions set up as the relay's are
// (store.Configure), so that the plan is the relay's.
func (b *bench) sweepCost(ctx context.Context, db *database, delivered int) (sweepCost, error) {
	c := sweepCost{Delivered: delivered, Pending: b.plan.SweepPending}
	cfg, err := pgxpool.ParseConfig(db.url)
	if err != nil {
		return c, err
	}
	cfg.MaxConns = 2
	store.Configure(cfg)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return c, err
	}
	defer pool.Close()
	if err := bulk(ctx, pool, c.Pending); err != nil {
		return c, err
	}
	st := store.New(pool, store.DefaultSchema(store.Table{Schema: "public", Name: "portal_event_outbox"}))
	var ms []float64
	for range 5 {
		t := time.Now()
		claimed, err := st.ClaimDue(ctx, 100, 0, time.Minute, 25, nil)
		if err != nil {
			return c, err
		}
		ms = append(ms, float64(time.Since(t).Microseconds())/1000)
		if len(claimed.Rows) == 0 {
			break
		}
	}
	c.ClaimMs = median(ms)
	return c, nil
}

func drainGoal(r *results, g goal) target {
	drain := unmeasured(fmt.Sprintf("backlog drain of %s rows", thousands(r.Plan.BacklogN)), fmt.Sprintf("≥ %s events/s", thousands(int(g.limit))))
	for _, d := range r.Backlog {
		if d.Rows == r.Plan.BacklogN && d.EventsPerSec > 0 {
			drain.Measured = fmt.Sprintf("%s events/s", thousands(int(d.EventsPerSec)))
			drain.Verdict = verdictAtLeast(d.EventsPerSec, g.limit)
			if d.TimedOut {
				drain.Measured += fmt.Sprintf(" (stopped after %s)", time.Duration(r.Plan.DrainLimit))
			}
		}
	}
	return drain
}

func sweepGoal(r *results, g goal) target {
	flat := unmeasured("sweep claim, small vs large delivered table", "flat")
	if len(r.SweepCost) == 2 {
		s, l := r.SweepCost[0], r.SweepCost[1]
		flat.What = fmt.Sprintf("sweep claim (store.ClaimDue), %s vs %s delivered rows", thousands(s.Delivered), thousands(l.Delivered))
		flat.Measured = fmt.Sprintf("%s vs %s ms", num(s.ClaimMs), num(l.ClaimMs))
		flat.Goal = fmt.Sprintf("flat (≤ %.0f× + %.1f ms)", g.limit, g.slack)
		flat.Verdict = verdictAtMost(l.ClaimMs, g.limit*s.ClaimMs+g.slack)
	}
	return flat
}

func backlogTables(r *results) string {
	drains := mdTable("| rows | mode | written in s | drained in s | first receipt s | events/s | target | | relay CPU s / 10k | relay peak RSS MiB | dup | CPU s: relay / Postgres / harness / other | machine busy |\n",
		"|--:|---|--:|--:|--:|--:|--:|---|--:|--:|--:|---|--:|\n",
		r.Backlog, func(d backlogResult) string {
			goal, verdict := "", ""
			if d.Rows == r.Plan.BacklogN {
				goal, verdict = atLeastCell(d.EventsPerSec, limitOf("backlog.drain"))
			}
			if d.TimedOut {
				verdict += fmt.Sprintf(" (stopped after %s: %s of %s)", time.Duration(r.Plan.DrainLimit), thousands(d.Received), thousands(d.Rows))
			}
			return fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %s | %.0f %% |\n",
				thousands(d.Rows), d.Mode, num(d.InsertSeconds), num(d.DrainSeconds), num(d.FirstReceiptSeconds),
				thousands(int(d.EventsPerSec)), goal, verdict, num(d.CPUPer10k), num(d.PeakRSSMiB), d.Duplicates,
				cpuCell(d.CPU), 100*d.CPU.Busy)
		})
	costs := mdTable("\n| delivered rows | pending rows | store.ClaimDue (100 rows, round trip), median ms |\n", "|--:|--:|--:|\n",
		r.SweepCost, func(c sweepCost) string {
			return fmt.Sprintf("| %s | %s | %s |\n", thousands(c.Delivered), thousands(c.Pending), num(c.ClaimMs))
		})
	return drains + costs
}

// mdBacklog is section 3: the drain and the sweep's cost.
func mdBacklog(b *markdown, r *results) {
	b.w("## 3. Backlog drain and the sweep's cost\n\n")
	b.w("The rows are written while no relay runs (the runner is \"down\"), in transactions of at most 100,000 rows; then the relay starts and the clock runs from its start to the last receipt. After the drain, with the relay stopped, %s pending rows are added and `store.ClaimDue`, the sweep's claim of 100 due rows, is timed from the client up to five times (the median counts), in sessions set up as the relay's are (`store.Configure`).\n\n", thousands(r.Plan.SweepPending))
	b.w("%s\n", backlogTables(r))
}
