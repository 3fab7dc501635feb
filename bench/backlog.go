package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
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

// sweepCost is the sweep's claim query on a table holding Delivered rows.
type sweepCost struct {
	Delivered int    `json:"delivered_rows"`
	Pending   int    `json:"pending_rows"`
	Plan      string `json:"plan"`
	// EXPLAIN (ANALYZE, BUFFERS) of the claim's SELECT … FOR UPDATE SKIP
	// LOCKED: the first run right after the drain, the median of the
	// next four, and the median of five after a VACUUM.
	FirstMs       float64 `json:"first_execution_ms"`
	FirstBuffers  int64   `json:"first_buffers"`
	MedianMs      float64 `json:"median_execution_ms"`
	MedianBuffers int64   `json:"median_buffers"`
	VacuumedMs    float64 `json:"vacuumed_execution_ms"`
	// ClaimMs is the median wall time of store.ClaimDue (the relay's own
	// statement: the UPDATE … RETURNING of 100 rows, round trip included).
	ClaimMs float64 `json:"claim_due_ms"`
}

// backlogMode drains with the stream on when it works (the production
// set-up; the backlog itself is the sweeper's work) with a 1 s sweep.
func (b *bench) backlogMode() mode {
	if b.stream.Checked && !b.stream.Available {
		return sweepMode
	}
	return mode{Name: "stream", CDC: "on", Sweep: time.Second}
}

// backlog drains a small table and the big backlog, and measures the sweep
// on each once it is all delivered.
func (b *bench) backlog(ctx context.Context) ([]backlogResult, []sweepCost, error) {
	var drains []backlogResult
	var costs []sweepCost
	for _, n := range []int{b.plan.SmallTableN, b.plan.BacklogN} {
		r, c, err := b.backlogOf(ctx, n)
		if errors.Is(err, errNoStream) {
			r, c, err = b.backlogOf(ctx, n) // now known: sweep-only
		}
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
	m := b.backlogMode()
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
	b.logf("sweep query with %s delivered rows: first %.3f ms (%d buffers), then %.3f ms; after VACUUM %.3f ms; ClaimDue %.3f ms",
		thousands(delivered), cost.FirstMs, cost.FirstBuffers, cost.MedianMs, cost.VacuumedMs, cost.ClaimMs)
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
// times the sweep's claim on it as it is, then after a VACUUM. The claim
// is the statement store.ClaimDue sends, taken from the store by a tracer
// on a claim of the drained table (nothing pending: it changes nothing),
// and explained in transactions that roll back. The sessions are set up
// as the relay's are (store.Configure), so the plan is the relay's.
func (b *bench) sweepCost(ctx context.Context, db *database, delivered int) (sweepCost, error) {
	c := sweepCost{Delivered: delivered, Pending: b.plan.SweepPending}
	cfg, err := pgxpool.ParseConfig(db.url)
	if err != nil {
		return c, err
	}
	cfg.MaxConns = 2
	store.Configure(cfg)
	claim := &firstStatement{}
	cfg.ConnConfig.Tracer = claim
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return c, err
	}
	defer pool.Close()
	st := store.New(pool, store.DefaultSchema(store.Table{Schema: "public", Name: "portal_event_outbox"}))
	if _, err := st.ClaimDue(ctx, 100, 0, time.Minute, 25, nil); err != nil {
		return c, err
	}
	sql, args := claim.get()
	if !strings.Contains(sql, "SKIP LOCKED") {
		return c, fmt.Errorf("store.ClaimDue sent %q first, not its claim", sql)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO `+table+` (event_type, payload) SELECT 'bench.pending', '{}' FROM generate_series(1, $1::int)`, c.Pending); err != nil {
		return c, err
	}
	times, bufs, plan, err := explainRuns(ctx, pool, 5, sql, args)
	if err != nil {
		return c, err
	}
	c.FirstMs, c.FirstBuffers, c.Plan = times[0], int64(bufs[0]), plan
	c.MedianMs, c.MedianBuffers = median(times[1:]), int64(median(bufs[1:]))
	if c.ClaimMs, err = timeClaims(ctx, st, 5); err != nil {
		return c, err
	}
	if _, err := pool.Exec(ctx, `VACUUM `+table); err != nil {
		return c, err
	}
	times, _, _, err = explainRuns(ctx, pool, 5, sql, args)
	c.VacuumedMs = median(times)
	return c, err
}

// timeClaims is the median wall time of n calls of store.ClaimDue for 100
// rows, stopping early when nothing is left to claim.
func timeClaims(ctx context.Context, st *store.Store, n int) (float64, error) {
	var ms []float64
	for range n {
		t := time.Now()
		claimed, err := st.ClaimDue(ctx, 100, 0, time.Minute, 25, nil)
		if err != nil {
			return 0, err
		}
		ms = append(ms, float64(time.Since(t).Microseconds())/1000)
		if len(claimed.Rows) == 0 {
			break
		}
	}
	return median(ms), nil
}

// firstStatement is a pgx tracer that keeps the first statement its
// connections send, with its arguments.
type firstStatement struct {
	mu   sync.Mutex
	sql  string
	args []any
}

func (f *firstStatement) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sql == "" {
		f.sql, f.args = d.SQL, d.Args
	}
	return ctx
}

func (f *firstStatement) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (f *firstStatement) get() (string, []any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sql, f.args
}

// explainRuns runs EXPLAIN (ANALYZE, BUFFERS) of query n times, each in a
// transaction that rolls back, and returns the execution times, the
// shared buffers touched and the first run's plan on one line.
func explainRuns(ctx context.Context, pool *pgxpool.Pool, n int, query string, args []any) (ms, buffers []float64, plan string, err error) {
	for i := range n {
		var raw []byte
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if err := tx.QueryRow(ctx, `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) `+query, args...).Scan(&raw); err != nil {
				return err
			}
			return errRollback
		})
		if !errors.Is(err, errRollback) {
			return ms, buffers, plan, fmt.Errorf("explain the claim: %w", err)
		}
		var out []struct {
			Plan          planNode `json:"Plan"`
			ExecutionTime float64  `json:"Execution Time"`
		}
		if err := json.Unmarshal(raw, &out); err != nil || len(out) == 0 {
			return ms, buffers, plan, fmt.Errorf("explain output: %v", err)
		}
		top := out[0].Plan
		ms, buffers = append(ms, out[0].ExecutionTime), append(buffers, float64(top.SharedHit+top.SharedRead))
		if i == 0 {
			plan = top.describe()
		}
	}
	return ms, buffers, plan, nil
}

// errRollback ends a transaction that only measures.
var errRollback = errors.New("rolled back")

type planNode struct {
	NodeType   string     `json:"Node Type"`
	IndexName  string     `json:"Index Name"`
	Relation   string     `json:"Relation Name"`
	SharedHit  int64      `json:"Shared Hit Blocks"`
	SharedRead int64      `json:"Shared Read Blocks"`
	Plans      []planNode `json:"Plans"`
}

// describe is "LockRows → Limit → Index Scan (portal_event_outbox_due_idx)".
func (n planNode) describe() string {
	s := n.NodeType
	if n.IndexName != "" {
		s += " (" + n.IndexName + ")"
	} else if n.Relation != "" {
		s += " (" + n.Relation + ")"
	}
	var kids []string
	for _, k := range n.Plans {
		kids = append(kids, k.describe())
	}
	if len(kids) > 0 {
		s += " → " + strings.Join(kids, ", ")
	}
	return s
}

// median is the middle of v, the mean of the two middles for an even
// count; 0 for none.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
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
	flat := unmeasured("sweep query, small vs large delivered table", "flat")
	if len(r.SweepCost) == 2 {
		s, l := r.SweepCost[0], r.SweepCost[1]
		flat.What = fmt.Sprintf("sweep query, %s vs %s delivered rows", thousands(s.Delivered), thousands(l.Delivered))
		flat.Measured = fmt.Sprintf("%s vs %s ms (first run after the drain: %s vs %s ms)", num(s.MedianMs), num(l.MedianMs), num(s.FirstMs), num(l.FirstMs))
		flat.Goal = fmt.Sprintf("flat (≤ %.0f× + %.1f ms)", g.limit, g.slack)
		flat.Verdict = verdictAtMost(l.MedianMs, g.limit*s.MedianMs+g.slack)
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
	costs := mdTable("\n| delivered rows | pending rows | first run after the drain, ms (buffers) | next 4, median ms (buffers) | after VACUUM, ms | store.ClaimDue (100 rows, round trip), ms | plan |\n",
		"|--:|--:|--:|--:|--:|--:|---|\n",
		r.SweepCost, func(c sweepCost) string {
			return fmt.Sprintf("| %s | %s | %s (%s) | %s (%s) | %s | %s | %s |\n",
				thousands(c.Delivered), thousands(c.Pending), num(c.FirstMs), thousands(int(c.FirstBuffers)),
				num(c.MedianMs), thousands(int(c.MedianBuffers)), num(c.VacuumedMs), num(c.ClaimMs), c.Plan)
		})
	return drains + costs
}

// mdBacklog is section 3: the drain and the sweep's cost.
func mdBacklog(b *markdown, r *results) {
	b.w("## 3. Backlog drain and the sweep's cost\n\n")
	b.w("The rows are written while no relay runs (the runner is \"down\"), in transactions of at most 100,000 rows; then the relay starts and the clock runs from its start to the last receipt. After the drain, with the relay stopped, %s pending rows are added and the sweep's claim — the `UPDATE` around `SELECT … ORDER BY next_attempt_at LIMIT 100 FOR UPDATE SKIP LOCKED` that `store.ClaimDue` sends, taken from the store by a pgx tracer — is run under `EXPLAIN (ANALYZE, BUFFERS)` in a transaction that rolls back: once right after the drain, four more times, and five times after a `VACUUM`; then `store.ClaimDue` itself is timed from the client. These sessions are set up as the relay's are (`store.Configure`: bitmap scans off), so the plan is the relay's.\n\n", thousands(r.Plan.SweepPending))
	b.w("%s\n", backlogTables(r))
}
