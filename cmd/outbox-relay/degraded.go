package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/config"
	"github.com/outbox-relay/outbox-relay/relay"
)

// errDegraded makes status exit 1 without another message.
type errDegraded struct{}

func (errDegraded) Error() string { return "degraded" }

// The rules for "degraded", documented in docs/commands.md:
//   - a pending row older than --max-pending-age (default 5m);
//   - any dead row (it needs an operator: requeue or delete it);
//   - with RELAY_CDC not off and wal_level logical: the slot is missing,
//     inactive, its wal_status is unreserved or lost, or it retains more
//     than RELAY_SLOT_WARN_BYTES;
//   - the relay on this host finds the database refusing a row's write,
//     or the runner down (its breaker is open).
//
// problems says, for each rule r breaks, what is wrong, in the words
// status prints; none means healthy.
func problems(cfg config.Config, r statusReport, maxAge time.Duration) []string {
	p := databaseProblems(cfg, r, maxAge)
	p = append(p, writeErrorProblems(r.Relay)...)
	return append(p, runnerProblems(r.Relay)...)
}

// databaseProblems are the rules on what the database shows: the outbox's
// rows and the replication slot.
func databaseProblems(cfg config.Config, r statusReport, maxAge time.Duration) []string {
	p := []string{}
	if r.Outbox.OldestPending > maxAge {
		p = append(p, fmt.Sprintf("oldest pending row is %s old (limit %s)", r.Outbox.OldestPending.Round(time.Second), maxAge))
	}
	if r.Outbox.Dead > 0 {
		p = append(p, fmt.Sprintf("%d dead rows (see outbox-relay requeue)", r.Outbox.Dead))
	}
	if o := r.Outbox.Ordering; o != nil && len(o.DeadKeys) > 0 {
		p = append(p, fmt.Sprintf("keys blocked by a dead row (RELAY_ORDERING_ON_DEAD=block; requeue or delete the row): %s",
			strings.Join(o.DeadKeys, ", ")))
	}
	if cfg.CDC == "off" || r.Slot.WALLevel != "logical" {
		return p
	}
	switch {
	case !r.Slot.Exists:
		p = append(p, fmt.Sprintf("replication slot %s does not exist (is the relay running?)", cfg.SlotName))
	case !r.Slot.Active:
		p = append(p, fmt.Sprintf("replication slot %s is not active (is the relay running?)", cfg.SlotName))
	}
	if r.Slot.WALStatus == "unreserved" || r.Slot.WALStatus == "lost" {
		p = append(p, fmt.Sprintf("replication slot wal_status is %s", r.Slot.WALStatus))
	}
	if r.Slot.RetainedBytes > cfg.SlotWarnBytes {
		p = append(p, fmt.Sprintf("replication slot retains %s of WAL (warning at %s)", bytesHuman(r.Slot.RetainedBytes), bytesHuman(cfg.SlotWarnBytes)))
	}
	return p
}

// runnerProblems says so when the relay finds its runner down.
func runnerProblems(v *relayView) []string {
	if v == nil || v.Runner == nil || v.Runner.State == relay.RunnerClosed {
		return nil
	}
	return []string{fmt.Sprintf("the runner is down since %s (breaker %s, %d probes): %s; claiming is paused and attempts do not count",
		v.Runner.Since.Format(time.RFC3339), v.Runner.State, v.Runner.Probes, v.Runner.LastError)}
}

// writeErrorProblems says, for each row whose write the relay sees refused,
// which row, which statement and why.
func writeErrorProblems(v *relayView) []string {
	if v == nil {
		return nil
	}
	var p []string
	for _, e := range v.WriteErrors {
		p = append(p, fmt.Sprintf("row %s: the database refuses its %s (SQLSTATE %s, %d tries since %s): %s",
			e.ID, e.Statement, e.SQLState, e.Tries, e.Since.Format(time.RFC3339), e.Message))
	}
	return p
}
