package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

// throughputResult is the time to deliver one load, and what it cost.
type throughputResult struct {
	Mode    string `json:"mode"`
	Load    string `json:"load"`
	Kind    string `json:"kind"` // bulk or single
	Events  int    `json:"events"`
	Skipped string `json:"skipped,omitempty"`
	// InsertSeconds is how long the database took to take the rows: the
	// INSERT … SELECT statement, or all the single-row commits.
	InsertSeconds float64 `json:"insert_seconds"`
	// DeliverSeconds runs from the bulk COMMIT's return, or from the
	// first single-row insert, to the last receipt at the runner.
	DeliverSeconds float64 `json:"deliver_seconds"`
	EventsPerSec   float64 `json:"events_per_second"`
	// FirstReceiptSeconds is from the same start to the first receipt.
	FirstReceiptSeconds float64 `json:"first_receipt_seconds"`
	TimedOut            bool    `json:"timed_out"`
	Missing             int     `json:"missing"`
	Duplicates          int     `json:"duplicates"`

	CPU        cpuUse  `json:"cpu"`
	CPUPer10k  float64 `json:"relay_cpu_seconds_per_10k"`
	PeakRSSMiB float64 `json:"relay_peak_rss_mib"`
	Stream     float64 `json:"stream_delivered"`
	Sweep      float64 `json:"sweep_delivered"`
	// Work is the relay's statements and the row versions, from the start
	// of the load to the relay's exit.
	Work *dbWork `json:"db_work,omitempty"`
}

// load is one throughput workload.
type load struct {
	kind string
	n    int
	keys int // ordering keys of single-row txns; 0: none
	// analyzed runs ANALYZE on the table first, when every row in it is
	// delivered: the statistics then say that almost nothing is pending,
	// as a production outbox's do when a burst comes.
	analyzed bool
}

func (l load) String() string {
	switch {
	case l.kind == "bulk" && l.analyzed:
		return fmt.Sprintf("INSERT … SELECT of %s rows, table analyzed when delivered", thousands(l.n))
	case l.kind == "bulk":
		return fmt.Sprintf("INSERT … SELECT of %s rows", thousands(l.n))
	case l.keys > 0:
		return fmt.Sprintf("%s single-row txns, %s keys", thousands(l.n), thousands(l.keys))
	}
	return fmt.Sprintf("%s single-row txns", thousands(l.n))
}

func (b *bench) loads() []load {
	var ls []load
	for _, n := range b.plan.BulkSizes {
		ls = append(ls, load{kind: "bulk", n: n})
	}
	ls = append(ls, load{kind: "single", n: b.plan.SingleN})
	// Last, so that the table holds every earlier load's rows, delivered.
	return append(ls, load{kind: "bulk", n: b.plan.BulkSizes[0], analyzed: true})
}

// throughput runs every load in every mode: one database per mode, a fresh
// relay per load so that its peak RSS and CPU belong to that load.
func (b *bench) throughput(ctx context.Context) ([]throughputResult, error) {
	var out []throughputResult
	var errs []error
	for _, m := range modes() {
		db, err := b.newDB(ctx, "throughput_"+m.Name)
		if err != nil {
			return out, err
		}
		for _, l := range b.loads() {
			r, err := b.throughputRun(ctx, db, m, l)
			out = append(out, r)
			if err != nil {
				if ctx.Err() != nil {
					b.dropDB(db)
					return out, err
				}
				errs = append(errs, fmt.Errorf("%s, %s: %w", m.Name, l, err))
				continue
			}
			if r.Skipped == "" {
				b.logf("throughput %-10s %-32s %6.2f s, %6.0f events/s; relay %.2f CPU s per 10k, peak RSS %.1f MiB",
					m.Name, l, r.DeliverSeconds, r.EventsPerSec, r.CPUPer10k, r.PeakRSSMiB)
			}
		}
		b.dropDB(db)
	}
	return out, errors.Join(errs...)
}

func (b *bench) throughputRun(ctx context.Context, db *database, m mode, l load) (res throughputResult, err error) {
	res = throughputResult{Mode: m.Name, Load: l.String(), Kind: l.kind, Events: l.n}
	p, err := b.startRelay(ctx, db, m, fmt.Sprintf("throughput, %s, %s", m.Name, l))
	if errors.Is(err, errNoStream) {
		res.Skipped = b.stream.Reason
		return res, nil
	}
	if err != nil {
		return res, err
	}
	var work0 *workSnapshot
	defer func() { // the named result takes the relay's figures
		st := p.stop()
		res.PeakRSSMiB, res.Stream, res.Sweep = st.PeakRSSMiB, st.Stream, st.Sweep
		if work0 != nil && ctx.Err() == nil {
			res.Work = workBetween(*work0, b.workAfter(ctx, db), l.n)
		}
	}()
	if l.analyzed {
		if _, err := db.pool.Exec(ctx, "ANALYZE "+table); err != nil {
			return res, err
		}
	}
	b.runner.Reset(true, l.n)
	limit := 30*time.Second + time.Duration(l.n/2000)*time.Second
	b.waitQuiet(ctx, b.quiet)
	w := b.workNow(ctx, db)
	work0 = &w
	cpu0 := b.cpuNow(p)
	var start int64
	switch l.kind {
	case "bulk":
		t := now()
		if err := bulk(ctx, db.pool, l.n); err != nil {
			return res, err
		}
		start = now()
		res.InsertSeconds = float64(start-t) / 1e9
	default:
		start = now()
		_, st, err := flood(ctx, db.pool, l.n, b.plan.SingleConns, l.keys)
		if err != nil {
			return res, err
		}
		res.InsertSeconds = st.Seconds
	}
	ok, err := b.runner.WaitDistinct(ctx, l.n, limit)
	if err != nil {
		return res, err
	}
	cpu1 := b.cpuNow(p)
	c := b.runner.Counts()
	res.TimedOut = !ok
	res.Missing = max(l.n-(c.Distinct), 0)
	res.Duplicates = c.Requests - c.Distinct
	res.DeliverSeconds, res.FirstReceiptSeconds, res.EventsPerSec = receiptRate(c, start)
	res.CPU = cpuBetween(cpu0, cpu1)
	res.CPUPer10k = relayCPUPer10k(res.CPU, c)
	if res.TimedOut {
		return res, fmt.Errorf("only %d of %d events delivered within %s", c.Distinct, l.n, limit)
	}
	return res, nil
}

// receiptRate is what the runner's counts say of a run that started at
// start (on the harness clock): seconds to the last and to the first
// receipt, and distinct events per second until the last.
func receiptRate(c relaytest.Counts, start int64) (last, first, perSec float64) {
	last = float64(since(c.Last)-start) / 1e9
	first = float64(since(c.First)-start) / 1e9
	if last > 0 {
		perSec = float64(c.Distinct) / last
	}
	return last, first, perSec
}

// relayCPUPer10k is the relay's CPU seconds per 10,000 requests.
func relayCPUPer10k(cpu cpuUse, c relaytest.Counts) float64 {
	return cpu.Relay / float64(max(c.Requests, 1)) * 10_000
}

// thousands formats n with commas: 20,000.
func thousands(n int) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + thousands(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
