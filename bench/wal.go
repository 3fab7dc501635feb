package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// walSample is the relay's slot at one moment.
type walSample struct {
	T        float64 `json:"t_seconds"`
	Lag      int64   `json:"confirmed_flush_lag_bytes"` // pg_current_wal_lsn() - confirmed_flush_lsn
	Retained int64   `json:"retained_bytes"`            // pg_current_wal_lsn() - restart_lsn
	Written  int64   `json:"wal_written_bytes"`         // since the outage began
	Active   bool    `json:"active"`
}

// walResult is the slot during a runner outage with other tables busy.
type walResult struct {
	Mode string `json:"mode"`

	OutageSeconds float64 `json:"outage_seconds"`
	// WALRate is the WAL written per second during the outage, nearly all
	// of it by the background writes to another table.
	WALRate    float64 `json:"wal_bytes_per_second"`
	OutboxRate int     `json:"outbox_rate"`
	OutboxRows int     `json:"outbox_rows"`

	Samples     []walSample `json:"samples"`
	MaxLag      int64       `json:"max_confirmed_flush_lag_bytes"`
	MaxRetained int64       `json:"max_retained_bytes"`
	// After is sampled every second for five seconds after the writes
	// stop and a CHECKPOINT; RetainedAfterCheckpoint is the last of them.
	After                   []walSample `json:"after_checkpoint"`
	RetainedAfterCheckpoint int64       `json:"retained_after_checkpoint_bytes"`
	LagAfterCheckpoint      int64       `json:"lag_after_checkpoint_bytes"`
	// RecoverySeconds is from the runner's return to the last outbox row
	// written during the outage being received.
	RecoverySeconds float64 `json:"recovery_seconds"`
	Recovered       bool    `json:"recovered"`
}

// wal takes the runner down, writes ~WALBytesRate to another table and a
// trickle to the outbox, and watches the relay's slot.
func (b *bench) wal(ctx context.Context) (*walResult, error) {
	m := streamMode
	res := &walResult{Mode: m.Name, OutboxRate: b.plan.WALOutboxHz}
	db, err := b.newDB(ctx, "wal")
	if err != nil {
		return res, err
	}
	defer b.dropDB(db)
	if _, err := db.pool.Exec(ctx, `CREATE TABLE filler (id bigserial PRIMARY KEY, pad text NOT NULL)`); err != nil {
		return res, err
	}
	// Retries come back within seconds once the runner is up again.
	p, err := b.startRelay(ctx, db, m, "wal, runner outage", "RELAY_BACKOFF_MAX=5s")
	if err != nil {
		return res, err
	}
	defer p.stop()

	b.waitQuiet(ctx, b.quiet)
	b.runner.Reset(false, 0)
	b.runner.Stop()
	runnerDown := true
	defer func() {
		if runnerDown {
			_ = b.runner.Restart(context.WithoutCancel(ctx))
		}
	}()

	probe := &walProbe{admin: b.admin, slot: db.slot}
	if err := db.pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&probe.startLSN); err != nil {
		return res, err
	}
	outboxRows, err := b.walOutage(ctx, db, probe, res)
	if err != nil {
		return res, err
	}
	if err := walAfterCheckpoint(ctx, probe, res); err != nil {
		return res, err
	}
	if err := b.runner.Restart(ctx); err != nil {
		return res, err
	}
	runnerDown = false
	return res, b.walRecovery(ctx, outboxRows, res)
}

// walProbe reads the relay's slot: its lag, the WAL it retains, and the
// WAL written since startLSN, at seconds since t0.
type walProbe struct {
	admin    *pgxpool.Pool
	slot     string
	startLSN string
	t0       time.Time
}

func (pr *walProbe) sample(ctx context.Context) (walSample, error) {
	s := walSample{T: time.Since(pr.t0).Seconds()}
	sl, err := store.SlotInfo(ctx, pr.admin, pr.slot)
	if err != nil {
		return s, err
	}
	s.Lag, s.Retained, s.Active = sl.ConfirmedLagBytes, sl.RetainedBytes, sl.Active
	err = pr.admin.QueryRow(ctx, `SELECT (pg_current_wal_lsn() - $1::pg_lsn)::int8`, pr.startLSN).Scan(&s.Written)
	return s, err
}

// every samples once a second, n times, counting from start, and hands
// each sample to fn.
func (pr *walProbe) every(ctx context.Context, start time.Time, n int, fn func(walSample)) error {
	for i := 1; i <= n; i++ {
		if err := sleep(ctx, time.Until(start.Add(time.Duration(i)*time.Second))); err != nil {
			return err
		}
		s, err := pr.sample(ctx)
		if err != nil {
			return err
		}
		fn(s)
	}
	return nil
}

// walOutage writes to the filler table and the outbox for the outage and
// samples the slot every second meanwhile; it returns how many outbox
// rows were written.
func (b *bench) walOutage(ctx context.Context, db *database, probe *walProbe, res *walResult) (outboxRows int, err error) {
	wctx, stopWrites := context.WithCancel(ctx)
	defer stopWrites()
	var wg sync.WaitGroup
	var fillErr error
	wg.Go(func() {
		sends, _, _ := paced(wctx, db.pool, b.plan.WALOutboxHz, 2, b.plan.WALOutage, "")
		outboxRows = len(sends)
	})
	wg.Go(func() { fillErr = b.fill(wctx, db, b.plan.WALBytesRate) })

	probe.t0 = time.Now()
	err = probe.every(ctx, probe.t0, int(b.plan.WALOutage/time.Second), func(s walSample) {
		res.Samples = append(res.Samples, s)
		res.MaxLag, res.MaxRetained = max(res.MaxLag, s.Lag), max(res.MaxRetained, s.Retained)
		b.debugf("wal t=%2.0fs lag %s retained %s written %s active %v", s.T, mib(s.Lag), mib(s.Retained), mib(s.Written), s.Active)
	})
	stopWrites()
	wg.Wait()
	if err != nil {
		return outboxRows, err
	}
	res.OutageSeconds = time.Since(probe.t0).Seconds()
	res.OutboxRows = outboxRows
	if fillErr != nil && !errors.Is(fillErr, context.Canceled) {
		return outboxRows, fmt.Errorf("background writes: %w", fillErr)
	}
	if n := len(res.Samples); n > 0 {
		res.WALRate = float64(res.Samples[n-1].Written) / res.Samples[n-1].T
	}
	return outboxRows, nil
}

// walAfterCheckpoint samples the slot for five seconds after a CHECKPOINT:
// Postgres moves restart_lsn only at checkpoints and running-transactions
// records, so the retained WAL read then is the honest figure.
func walAfterCheckpoint(ctx context.Context, probe *walProbe, res *walResult) error {
	if _, err := probe.admin.Exec(ctx, `CHECKPOINT`); err != nil {
		return err
	}
	return probe.every(ctx, time.Now(), 5, func(s walSample) {
		res.After = append(res.After, s)
		res.RetainedAfterCheckpoint, res.LagAfterCheckpoint = s.Retained, s.Lag
	})
}

// walRecovery waits for the outbox rows written during the outage to reach
// the runner once it is back.
func (b *bench) walRecovery(ctx context.Context, outboxRows int, res *walResult) error {
	back := now()
	ok, err := b.runner.WaitDistinct(ctx, outboxRows, 30*time.Second)
	if err != nil {
		return err
	}
	res.Recovered = ok
	res.RecoverySeconds = float64(since(b.runner.Counts().Last)-back) / 1e9
	b.logf("wal: %.1f MiB/s written for %.0f s with the runner down: max lag %s, max retained %s; after CHECKPOINT retained %s; %d outbox rows delivered %.1f s after the runner came back",
		res.WALRate/(1<<20), res.OutageSeconds, mib(res.MaxLag), mib(res.MaxRetained), mib(res.RetainedAfterCheckpoint), outboxRows, res.RecoverySeconds)
	if !ok {
		return fmt.Errorf("wal: outbox rows written during the outage not all delivered 30 s after the runner came back")
	}
	return nil
}

// fill writes about rate bytes per second of WAL into the filler table,
// ten statements a second of ~1 KiB rows, until ctx ends.
func (b *bench) fill(ctx context.Context, db *database, rate int) error {
	const rowBytes = 1100 // 1,024 bytes of text plus tuple and WAL record headers
	perTick := max(rate/10/rowBytes, 1)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		// md5 of random text does not compress, so the rows stay ~1 KiB.
		if _, err := db.pool.Exec(ctx, `INSERT INTO filler (pad)
SELECT string_agg(md5(random()::text), '') FROM generate_series(1, $1::int) r, generate_series(1, 32) k GROUP BY r`, perTick); err != nil {
			return err
		}
	}
}

// mib formats bytes as MiB with one decimal.
func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// walMeasured is the WAL result when the outage ran and was sampled.
func (r *results) walMeasured() *walResult {
	if w := r.WAL; w != nil && len(w.Samples) > 0 {
		return w
	}
	return nil
}

func lagGoal(r *results, g goal) target {
	lag := unmeasured("slot confirmed-flush lag, runner down", fmt.Sprintf("< %.0f MiB, flat", g.limit/(1<<20)))
	if w := r.walMeasured(); w != nil {
		lag.What = fmt.Sprintf("slot confirmed-flush lag, runner down %.0f s", w.OutageSeconds)
		lag.Measured = "max " + mib(w.MaxLag)
		lag.Verdict = verdictAtMost(float64(w.MaxLag), g.limit)
	}
	return lag
}

func retainedGoal(r *results, g goal) target {
	ret := unmeasured("slot retained WAL after CHECKPOINT", fmt.Sprintf("< %.0f MiB", g.limit/(1<<20)))
	if w := r.walMeasured(); w != nil {
		ret.Measured = mib(w.RetainedAfterCheckpoint) + " (max before: " + mib(w.MaxRetained) + ")"
		ret.Verdict = verdictAtMost(float64(w.RetainedAfterCheckpoint), g.limit)
	}
	return ret
}

func walTable(r *results) string {
	w := r.WAL
	if w == nil {
		return ""
	}
	rec := fmt.Sprintf("%s s", num(w.RecoverySeconds))
	if !w.Recovered {
		rec = "not within 30 s"
	}
	return "| runner outage | WAL written | outbox rows meanwhile | max confirmed-flush lag | max retained | retained after CHECKPOINT | lag after CHECKPOINT | delivered after the runner returned |\n" +
		"|--:|--:|--:|--:|--:|--:|--:|--:|\n" + fmt.Sprintf("| %.0f s | %.1f MiB/s | %s (%d/s) | %s %s | %s | %s %s | %s | %s |\n",
		w.OutageSeconds, w.WALRate/(1<<20), thousands(w.OutboxRows), w.OutboxRate,
		mib(w.MaxLag), verdictAtMost(float64(w.MaxLag), limitOf("wal.lag")), mib(w.MaxRetained),
		mib(w.RetainedAfterCheckpoint), verdictAtMost(float64(w.RetainedAfterCheckpoint), limitOf("wal.retained")),
		mib(w.LagAfterCheckpoint), rec)
}

// mdWAL is section 5: the slot's lag and retained WAL while the runner is down.
func mdWAL(b *markdown, r *results) {
	wl := r.WAL
	if !b.section("\n## 5. WAL during a runner outage", wl != nil) {
		return
	}
	b.w("The runner stops listening (connections refused) for %.0f s while another table in the same database takes about %.1f MiB/s of WAL (1 KiB rows, ten statements a second) and the outbox takes %d rows/s, which the relay claims, fails to send and backs off (`RELAY_BACKOFF_MAX=5s` here). Every second the slot's confirmed-flush lag (`pg_current_wal_lsn() - confirmed_flush_lsn`) and retained WAL (`pg_current_wal_lsn() - restart_lsn`) are read, and again each second for 5 s after the writes stop and a `CHECKPOINT`, since PostgreSQL moves `restart_lsn` only at checkpoints and running-transactions records.\n\n",
		wl.OutageSeconds, wl.WALRate/(1<<20), wl.OutboxRate)
	b.w("%s\nPer second, MiB (lag / retained): %s; after the CHECKPOINT: %s.\n\n", walTable(r), walSamples(wl.Samples), walSamples(wl.After))
}

// walSamples lists samples as lag/retained in MiB.
func walSamples(samples []walSample) string {
	var out []string
	for _, s := range samples {
		out = append(out, fmt.Sprintf("%.1f/%.1f", float64(s.Lag)/(1<<20), float64(s.Retained)/(1<<20)))
	}
	return strings.Join(out, ", ")
}
