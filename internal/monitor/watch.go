package monitor

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// CDCState is the replication stream as the metrics and /readyz show it.
type CDCState struct {
	Enabled   bool   `json:"enabled"`
	Connected bool   `json:"connected"`
	Role      string `json:"role"` // streamer, standby, down or unavailable
}

// WatchConfig tunes the Watcher.
type WatchConfig struct {
	Interval time.Duration
	Slot     string // empty: no replication, no slot to watch
	// Guard, when set, acts on the slot's figures at each refresh.
	Guard SlotGuard
	// CDC, when set, reports the stream's state.
	CDC func() CDCState
}

// SlotGuard acts on the slot's figures (cdc.Guard, which may drop the
// slot); dropped drops are counted in slot_recreated_total.
type SlotGuard interface {
	Check(ctx context.Context, slot store.Slot) (dropped bool, err error)
}

// Snapshot is the last figures the Watcher read.
type Snapshot struct {
	At    time.Time   `json:"at"`
	Stats store.Stats `json:"outbox"`
	Slot  *store.Slot `json:"slot,omitempty"`
	CDC   CDCState    `json:"cdc"`
	Err   string      `json:"error,omitempty"`
}

// Watcher refreshes the SQL-backed gauges on an interval (never per
// scrape, so a scrape storm costs the database nothing) and hands the
// slot's figures to the guard.
type Watcher struct {
	cfg     WatchConfig
	store   *store.Store
	metrics *Metrics
	log     *slog.Logger

	mu   sync.Mutex
	last Snapshot

	failing bool
}

// NewWatcher makes a Watcher; Run starts it.
func NewWatcher(cfg WatchConfig, st *store.Store, m *Metrics, log *slog.Logger) *Watcher {
	return &Watcher{cfg: cfg, store: st, metrics: m, log: log}
}

// Run refreshes at once and then every Interval until ctx is done.
func (w *Watcher) Run(ctx context.Context) error {
	t := time.NewTicker(w.cfg.Interval)
	defer t.Stop()
	for {
		w.RunOnce(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// RunOnce reads the figures, updates the metrics and applies the guard.
func (w *Watcher) RunOnce(ctx context.Context) Snapshot {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	snap := Snapshot{At: time.Now()}
	snap.CDC = w.cdc()
	// With RELAY_CDC=auto the stream may find the server unable to
	// stream, and later able again.
	w.metrics.cdcEnabled.Set(b2f(snap.CDC.Enabled))
	err := w.refresh(ctx, &snap)
	switch {
	case err != nil && !w.failing:
		w.log.Warn("cannot read outbox figures", "error", err)
		w.failing = true
	case err == nil && w.failing:
		w.log.Info("reading outbox figures again")
		w.failing = false
	}
	if err != nil {
		snap.Err = err.Error()
	}
	w.mu.Lock()
	w.last = snap
	w.mu.Unlock()
	return snap
}

func (w *Watcher) refresh(ctx context.Context, snap *Snapshot) error {
	stats, err := w.store.Stats(ctx, false)
	if err != nil {
		return err
	}
	snap.Stats = stats
	w.metrics.setStats(stats)
	if w.cfg.Slot == "" {
		return nil
	}
	slot, err := store.SlotInfo(ctx, w.store.Pool(), w.cfg.Slot)
	if err != nil {
		return err
	}
	snap.Slot = &slot
	w.metrics.setSlot(slot)
	if w.cfg.Guard == nil {
		return nil
	}
	dropped, err := w.cfg.Guard.Check(ctx, slot)
	if dropped {
		w.metrics.slotRecreated.Inc()
	}
	return err
}

// Last is the most recent snapshot, with the stream's state as it is now.
func (w *Watcher) Last() Snapshot {
	w.mu.Lock()
	s := w.last
	w.mu.Unlock()
	s.CDC = w.cdc()
	return s
}

func (w *Watcher) cdc() CDCState {
	if w.cfg.CDC == nil {
		return CDCState{Role: "off"}
	}
	return w.cfg.CDC()
}
