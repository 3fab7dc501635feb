// Package sweeper is the safety net: it claims due rows from the outbox in
// batches with FOR UPDATE SKIP LOCKED and hands them to the Deliverer. It
// covers whatever the replication stream missed and every backed-off retry.
package sweeper

import (
	"context"
	"log/slog"
	"time"
)

// Deliverer is what the sweeper needs from relay.Deliverer.
type Deliverer interface {
	// DeliverDue claims and queues up to limit due rows; rows never tried
	// only when older than grace. It bounds its own query time and blocks
	// while the delivery queue is full.
	DeliverDue(ctx context.Context, limit int, grace time.Duration) (int, error)
	// Rescheduled signals that retries were scheduled, or that claiming
	// resumed.
	Rescheduled() <-chan struct{}
	// Paused is how long claiming waits (the runner is down, or asked for
	// a pause); 0 when it does not. DeliverDue claims nothing meanwhile
	// but the breaker's probes.
	Paused() time.Duration
}

// Queue is what the sweeper needs from store.Store: when to wake up next.
type Queue interface {
	// NextDue is the time until the next row is due, fresh rows counting
	// after grace (ok false: none is pending).
	NextDue(ctx context.Context, grace time.Duration) (time.Duration, bool, error)
}

// Config tunes the sweeper.
type Config struct {
	Interval  time.Duration
	BatchSize int
	// Grace is how long rows never tried are left to the replication
	// stream (internal/handover); the server drops it to zero where no
	// stream can run.
	Grace time.Duration
	// OnSweep, when set, is told of every pass (for metrics).
	OnSweep func(Pass)
	// Wake, when set, makes the sweeper sweep at once instead of at its
	// next tick: the stream signals it after a failover, when rows it will
	// not announce are left in the table. The pass keeps the grace (a
	// fresh row may be in flight from the stream, unclaimed: see
	// internal/handover), and the sweeper comes back when the youngest of
	// them passes it.
	Wake <-chan struct{}
	// Nudge, when set, makes the sweeper sweep at once with its usual
	// grace: the stream signals it when it left rows to the sweeper.
	Nudge <-chan struct{}
}

// Pass is what one sweep did.
type Pass struct {
	Claimed int
	Took    time.Duration
	Err     error
}

// Sweeper runs the periodic sweep.
type Sweeper struct {
	cfg Config
	d   Deliverer
	q   Queue
	log *slog.Logger
}

// New makes a Sweeper that hands due rows to d and asks q when the next
// one falls due; Run starts it.
func New(cfg Config, d Deliverer, q Queue, log *slog.Logger) *Sweeper {
	return &Sweeper{cfg: cfg, d: d, q: q, log: log}
}

// queryTimeout bounds every statement of a sweep.
const queryTimeout = 10 * time.Second

// minWait keeps an overdue row that cannot be claimed (locked by a racing
// claimer for a moment) from turning the loop into a spin.
const minWait = 20 * time.Millisecond

// Run sweeps at once, then every Interval, and earlier when a retry or a
// fresh row falls due before the next tick or Wake or Nudge is signalled. It returns when ctx is done. Database errors
// are logged once per outage and retried with backoff.
func (s *Sweeper) Run(ctx context.Context) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-s.d.Rescheduled():
		case <-s.cfg.Nudge: // nil when unset: never ready
		case <-s.cfg.Wake: // likewise
		}
		wait, err := s.pass(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			if failures == 0 {
				s.log.Error("sweep failed; retrying with backoff", "error", err)
			}
			failures++
			wait = min(s.cfg.Interval, time.Duration(1<<min(failures-1, 6))*100*time.Millisecond)
		case failures > 0:
			s.log.Info("sweeping again", "failed_passes", failures)
			failures = 0
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
	}
}

// pass sweeps once and returns how long to wait before the next one.
// Every pass leaves rows younger than the grace alone, also one woken
// after a failover: the new stream session may be sending such a row
// without a claim, and a claim would not stop that send.
func (s *Sweeper) pass(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	n, err := s.sweep(ctx, s.cfg.Grace)
	if s.cfg.OnSweep != nil {
		s.cfg.OnSweep(Pass{Claimed: n, Took: time.Since(start), Err: err})
	}
	if err != nil {
		return 0, err
	}
	// While claiming waits, the next due row does not matter: the sweeper
	// comes back when the wait ends (the next probe, the end of a pause)
	// or when Rescheduled says claiming resumed.
	if p := s.d.Paused(); p > 0 {
		return max(min(p, s.cfg.Interval), minWait), nil
	}
	qctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	next, ok, err := s.q.NextDue(qctx, s.cfg.Grace)
	if err != nil {
		return 0, err
	}
	if !ok || next > s.cfg.Interval {
		return s.cfg.Interval, nil
	}
	return max(next, minWait), nil
}

// RunOnce claims due rows batch after batch until a batch comes back short,
// and returns how many it claimed.
func (s *Sweeper) RunOnce(ctx context.Context) (int, error) {
	return s.sweep(ctx, s.cfg.Grace)
}

func (s *Sweeper) sweep(ctx context.Context, grace time.Duration) (int, error) {
	total := 0
	for {
		n, err := s.d.DeliverDue(ctx, s.cfg.BatchSize, grace)
		total += n
		if err != nil || n < s.cfg.BatchSize {
			return total, err
		}
	}
}
