package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/config"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// statusReport is what `status` prints; --json prints it as it is.
type statusReport struct {
	Table    string      `json:"table"`
	CDC      string      `json:"cdc_setting"`
	Outbox   store.Stats `json:"outbox"`
	SlotName string      `json:"slot_name"`
	Slot     store.Slot  `json:"slot"`
	Relay    *relayView  `json:"relay,omitempty"`
	Healthy  bool        `json:"healthy"`
	Problems []string    `json:"problems"`
}

// runStatus exits 1 when the outbox is degraded (degraded.go says when).
func runStatus(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	maxAge := fs.Duration("max-pending-age", 5*time.Minute, "oldest pending row allowed before status is degraded")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(environ, config.NeedDatabase)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	st, err := connectStore(cctx, cfg)
	var unusable *store.SchemaError
	switch {
	case errors.As(err, &unusable):
		return err // exit 1: the relay cannot work on this table
	case err != nil:
		return usageError{err} // exit 2: no status could be taken
	}
	defer st.Pool().Close()

	r := statusReport{Table: cfg.Table.String(), CDC: cfg.CDC, SlotName: cfg.SlotName}
	if r.Outbox, err = st.Stats(cctx, true); err != nil {
		return usageError{err}
	}
	if r.Slot, err = store.SlotInfo(cctx, st.Pool(), cfg.SlotName); err != nil {
		return usageError{err}
	}
	r.Relay = probeRelay(cctx, cfg)
	r.Problems = problems(cfg, r, *maxAge)
	r.Healthy = len(r.Problems) == 0
	if err := printReport(stdout, *asJSON, r, printStatus); err != nil {
		return err
	}
	if !r.Healthy {
		return errDegraded{}
	}
	return nil
}

// printReport prints a command's report: as indented JSON with --json,
// else as text.
func printReport[R any](w io.Writer, asJSON bool, r R, text func(io.Writer, R)) error {
	if !asJSON {
		text(w, r)
		return nil
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func printStatus(w io.Writer, r statusReport) {
	state := "healthy"
	if !r.Healthy {
		state = "DEGRADED"
	}
	fmt.Fprintf(w, "outbox-relay status: %s\n\n", state)
	fmt.Fprintf(w, "outbox %s\n", r.Table)
	fmt.Fprintf(w, "  pending     %d (oldest %s)\n", r.Outbox.Pending, r.Outbox.OldestPending.Round(time.Second))
	fmt.Fprintf(w, "  delivered   %d\n", r.Outbox.Delivered)
	fmt.Fprintf(w, "  dead        %d\n", r.Outbox.Dead)
	printOrdering(w, r.Outbox.Ordering)
	fmt.Fprintln(w)
	fmt.Fprintf(w, "replication (RELAY_CDC=%s, wal_level=%s)\n", r.CDC, r.Slot.WALLevel)
	if r.Slot.Exists {
		fmt.Fprintf(w, "  slot        %s, active=%v, wal_status=%s\n", r.SlotName, r.Slot.Active, r.Slot.WALStatus)
		fmt.Fprintf(w, "  retained    %s (pg_current_wal_lsn - restart_lsn)\n", bytesHuman(r.Slot.RetainedBytes))
		fmt.Fprintf(w, "  flush lag   %s (pg_current_wal_lsn - confirmed_flush_lsn)\n", bytesHuman(r.Slot.ConfirmedLagBytes))
	} else {
		fmt.Fprintf(w, "  slot        %s does not exist\n", r.SlotName)
	}
	fmt.Fprintf(w, "  max_slot_wal_keep_size = %s (the guard while the relay itself is down; -1 is unlimited)\n", r.Slot.MaxSlotWALKeepSize)
	switch {
	case r.Relay == nil:
	case r.Relay.Reachable:
		fmt.Fprintf(w, "\nrelay at %s: %d rows whose writes the database refuses\n", r.Relay.Address, len(r.Relay.WriteErrors))
		if rs := r.Relay.Runner; rs != nil {
			fmt.Fprintf(w, "  runner      %s since %s, concurrency limit %d\n", rs.State, rs.Since.Format(time.RFC3339), rs.ConcurrencyLimit)
		}
	default:
		fmt.Fprintf(w, "\nrelay at %s: not reachable from here (its refused writes are not shown)\n", r.Relay.Address)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "\nproblem: %s", p)
	}
	if len(r.Problems) > 0 {
		fmt.Fprintln(w)
	}
}

// printOrdering shows the keys that wait, when rows are ordered per key.
func printOrdering(w io.Writer, o *store.OrderingStats) {
	if o == nil {
		return
	}
	fmt.Fprintf(w, "  blocked keys %d (head waiting for a retry, or dead under block)\n", o.BlockedKeys)
	if h := o.Oldest; h != nil {
		state := "waiting for a retry"
		if h.Dead {
			state = "dead"
		}
		fmt.Fprintf(w, "  oldest       key %q: row %s, %s, %s old: %s\n", h.Key, h.ID, state, h.Age.Round(time.Second), h.LastError)
	}
}

func bytesHuman(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
