// Package retention deletes delivered rows once they are older than the
// retention period, so the outbox stays small without long locks.
package retention

import (
	"context"
	"log/slog"
	"time"
)

// Deleter is what retention needs from the store.
type Deleter interface {
	DeleteDelivered(ctx context.Context, cutoff time.Time, limit int) (int64, error)
}

// Config tunes the pruner.
type Config struct {
	Keep      time.Duration // delivered rows older than this go; 0 keeps all
	Interval  time.Duration // between passes
	BatchSize int           // rows per DELETE
	MaxBatch  int           // DELETEs per pass, so one pass stays short
	// OnDelete, when set, is told how many rows a pass deleted.
	OnDelete func(n int64)
}

// Pruner runs retention.
type Pruner struct {
	cfg Config
	db  Deleter
	log *slog.Logger
}

// New makes a Pruner.
func New(cfg Config, db Deleter, log *slog.Logger) *Pruner {
	return &Pruner{cfg: cfg, db: db, log: log}
}

// Run prunes every Interval until ctx is done; with Keep 0 it does nothing.
func (p *Pruner) Run(ctx context.Context) error {
	if p.cfg.Keep <= 0 {
		return nil
	}
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	failing := false
	for {
		_, err := p.RunOnce(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil && !failing:
			p.log.Warn("retention failed; retrying next pass", "error", err)
		case err == nil && failing:
			p.log.Info("retention works again")
		}
		failing = err != nil
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// RunOnce deletes up to MaxBatch batches of BatchSize old delivered rows,
// stopping at the first short batch, and returns how many it deleted.
func (p *Pruner) RunOnce(ctx context.Context) (int64, error) {
	cutoff := time.Now().Add(-p.cfg.Keep)
	var total int64
	for range p.cfg.MaxBatch {
		qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		n, err := p.db.DeleteDelivered(qctx, cutoff, p.cfg.BatchSize)
		cancel()
		total += n
		if err != nil || n < int64(p.cfg.BatchSize) {
			p.report(total)
			return total, err
		}
	}
	p.report(total)
	return total, nil
}

func (p *Pruner) report(n int64) {
	if n > 0 && p.cfg.OnDelete != nil {
		p.cfg.OnDelete(n)
	}
}
