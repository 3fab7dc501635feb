package cdc

import (
	"context"
	"log/slog"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// GuardConfig bounds the WAL the stream's slot may retain.
type GuardConfig struct {
	Slot      string
	WarnBytes int64 // past this, a warning (once per crossing)
	MaxBytes  int64 // past this, the slot is dropped
}

// Guard protects the database's disk from the stream's slot: a warning
// past WarnBytes of retained WAL, and past MaxBytes, or once the server has
// invalidated the slot (wal_status lost), the slot is dropped so that the
// stream makes it again. That is safe because the table, not the slot, is
// the queue: the sweeper covers the gap. The caller reads the slot's
// figures (monitor's watcher, which shows them) and passes them to Check.
type Guard struct {
	cfg    GuardConfig
	db     store.Querier
	log    *slog.Logger
	warned bool
}

// NewGuard makes a Guard that drops the slot through db.
func NewGuard(cfg GuardConfig, db store.Querier, log *slog.Logger) *Guard {
	return &Guard{cfg: cfg, db: db, log: log}
}

// Check applies the guard to the slot as last read, and reports whether
// it dropped it. Calls must not overlap.
func (g *Guard) Check(ctx context.Context, slot store.Slot) (dropped bool, err error) {
	over := slot.Exists && slot.RetainedBytes > g.cfg.WarnBytes
	switch {
	case over && !g.warned:
		g.log.Warn("replication slot retains a lot of WAL", "slot", g.cfg.Slot,
			"retained_bytes", slot.RetainedBytes, "confirmed_flush_lag_bytes", slot.ConfirmedLagBytes,
			"warn_bytes", g.cfg.WarnBytes, "max_bytes", g.cfg.MaxBytes)
	case !over && g.warned:
		g.log.Info("replication slot back under the warning threshold", "slot", g.cfg.Slot, "retained_bytes", slot.RetainedBytes)
	}
	g.warned = over
	if !slot.Exists || (slot.RetainedBytes <= g.cfg.MaxBytes && slot.WALStatus != "lost") {
		return false, nil
	}
	g.log.Error("dropping the replication slot to protect the database's disk; the stream recreates it and the sweeper covers the gap",
		"slot", g.cfg.Slot, "retained_bytes", slot.RetainedBytes, "max_bytes", g.cfg.MaxBytes, "wal_status", slot.WALStatus)
	if err := store.DropSlot(ctx, g.db, g.cfg.Slot); err != nil {
		return false, err
	}
	return true, nil
}
