package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
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

// sweepSelect is the row-choosing subquery of the sweep's claim, as
// store.New builds it for ClaimDue with a grace of 0. Keep in step with
// internal/store/store.go.
const sweepSelect = `SELECT id FROM ` + table + `
WHERE status = 'pending' AND next_attempt_at <= now()
	AND (attempts > 0 OR next_attempt_at <= now() - 0::float8 * interval '1 second')
ORDER BY next_attempt_at
LIMIT 100
FOR UPDATE SKIP LOCKED`

// sweepCost adds pending rows to a drained table (no relay running) and
// times the sweep on it as it is, then after a VACUUM. The queries run in
// sessions set up as the relay's are (store.Configure), so that the plan
// is the one the relay gets.
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
	if _, err := pool.Exec(ctx, `INSERT INTO `+table+` (event_type, payload) SELECT 'bench.pending', '{}' FROM generate_series(1, $1::int)`, c.Pending); err != nil {
		return c, err
	}
	var times []float64
	var bufs []int64
	for i := range 5 {
		ms, buffers, plan, err := explain(ctx, pool, sweepSelect)
		if err != nil {
			return c, err
		}
		if i == 0 {
			c.FirstMs, c.FirstBuffers, c.Plan = ms, buffers, plan
			continue
		}
		times, bufs = append(times, ms), append(bufs, buffers)
	}
	c.MedianMs, c.MedianBuffers = median(times), int64(median(int64s(bufs)))

	st := store.New(pool, store.DefaultSchema(store.Table{Schema: "public", Name: "portal_event_outbox"}))
	var claims []float64
	for range 5 {
		t := time.Now()
		claimed, err := st.ClaimDue(ctx, 100, 0, time.Minute, 25, nil)
		if err != nil {
			return c, err
		}
		claims = append(claims, float64(time.Since(t).Microseconds())/1000)
		if len(claimed.Rows) == 0 {
			break
		}
	}
	c.ClaimMs = median(claims)

	if _, err := pool.Exec(ctx, `VACUUM `+table); err != nil {
		return c, err
	}
	times = times[:0]
	for range 5 {
		ms, _, _, err := explain(ctx, pool, sweepSelect)
		if err != nil {
			return c, err
		}
		times = append(times, ms)
	}
	c.VacuumedMs = median(times)
	return c, nil
}

// explain runs EXPLAIN (ANALYZE, BUFFERS) and returns the execution time,
// the shared buffers touched and a one-line plan.
func explain(ctx context.Context, pool *pgxpool.Pool, query string) (float64, int64, string, error) {
	var raw []byte
	if err := pool.QueryRow(ctx, `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) `+query).Scan(&raw); err != nil {
		return 0, 0, "", err
	}
	var out []struct {
		Plan          planNode `json:"Plan"`
		ExecutionTime float64  `json:"Execution Time"`
	}
	if err := json.Unmarshal(raw, &out); err != nil || len(out) == 0 {
		return 0, 0, "", fmt.Errorf("explain output: %v", err)
	}
	top := out[0].Plan
	return out[0].ExecutionTime, top.SharedHit + top.SharedRead, top.describe(), nil
}

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

func int64s(v []int64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}
