package faults

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// slotName is the relay's slot at the defaults (RELAY_SLOT_NAME).
const slotName = "outbox_relay"

// On PostgreSQL 17 and newer the relay makes its slot a failover slot, and
// a standby with sync_replication_slots keeps a copy of it. The primary
// crashes under load and the synchronous standby is promoted: the relay
// streams on from the standby's copy of the slot, not from a new one (the
// copy is still the one on the new primary, synced, its position carried
// over, and the relay says "slot created" once, on the old primary),
// nothing is lost and the runner gets no event twice: rows the copy sends
// again were delivered already or are claimed, and an outcome write the
// crash cut is written again on the new primary, where the synchronous
// standby has the claim.
func TestFailoverSyncedSlot(t *testing.T) {
	pgtest.SkipBelow(t, 17, "a standby keeps copies of failover slots (sync_replication_slots) from 17 on")
	var atCrash slotCopy
	f := failover(t, scenario{sync: true, pairOpts: []pgtest.PairOption{pgtest.WithSlotSync()},
		ready:   func(pair *pgtest.Pair) { waitSlotCopy(t, pair) },
		atCrash: func(pair *pgtest.Pair) { atCrash = readSlotCopy(t, pair) }})
	if f.dbLost != 0 {
		t.Errorf("%d commits the inserter saw are missing on the promoted synchronous standby", f.dbLost)
	}
	if len(f.extra) != 0 {
		t.Errorf("the runner got %d events the promoted synchronous standby does not hold", len(f.extra))
	}
	if f.r.Duplicates != 0 {
		t.Errorf("%d duplicates, want none: the slot's copy sent rows again that were sent already", f.r.Duplicates)
	}
	if n := strings.Count(f.logs, "replication: slot created"); n != 1 {
		t.Errorf("the relay created its slot %d times, want once (on the old primary): the synced copy was not used", n)
	}
	onNew := pgtest.Connect(t, f.pair.Standby.URL("postgres"))
	var synced, carried bool
	var lsn string
	if err := onNew.QueryRow(context.Background(), `SELECT synced, confirmed_flush_lsn >= $2::pg_lsn, confirmed_flush_lsn::text
		FROM pg_replication_slots WHERE slot_name = $1`, slotName, atCrash.copyLSN).Scan(&synced, &carried, &lsn); err != nil {
		t.Fatalf("the relay's slot on the new primary: %v", err)
	}
	if !synced {
		t.Error("the slot on the new primary is not the standby's synced copy: it was made again")
	}
	if !carried {
		t.Errorf("the slot's confirmed_flush_lsn on the new primary is %s, behind the copy's %s at the crash", lsn, atCrash.copyLSN)
	}
	t.Logf("slot %s: confirmed_flush_lsn %s on the old primary at the crash, %s on the standby's copy (%d bytes behind), %s on the new primary at the end",
		slotName, atCrash.primaryLSN, atCrash.copyLSN, atCrash.behind, lsn)
	figures := f.figures()
	figures["slot_lsn_old_primary_at_crash"] = atCrash.primaryLSN
	figures["slot_lsn_copy_at_crash"] = atCrash.copyLSN
	figures["slot_copy_behind_bytes"] = strconv.FormatInt(atCrash.behind, 10)
	figures["slot_lsn_new_primary_at_end"] = lsn
	figures["slot_created_logs"] = strconv.Itoa(strings.Count(f.logs, "replication: slot created"))
	record(t, "failover, synchronous standby with the synced failover slot", f.r, figures)
}

// slotCopy is the relay's slot on the primary and the standby's copy of it
// just before the crash.
type slotCopy struct {
	primaryLSN, copyLSN string // confirmed_flush_lsn
	behind              int64  // bytes the copy is behind the primary's slot
}

// waitSlotCopy waits for the standby to hold a synced, persistent copy of
// the relay's slot: the slot sync worker makes it a while after the slot
// (it naps up to 30 s between rounds while nothing changes).
func waitSlotCopy(t *testing.T, pair *pgtest.Pair) {
	t.Helper()
	standby := pgtest.Connect(t, pair.Standby.URL("postgres"))
	pgtest.WaitFor(t, time.Minute, "the standby's synced copy of the relay's slot", func() bool {
		var n int
		err := standby.QueryRow(context.Background(), `SELECT count(*) FROM pg_replication_slots
			WHERE slot_name = $1 AND synced AND NOT temporary AND confirmed_flush_lsn IS NOT NULL`, slotName).Scan(&n)
		return err == nil && n == 1
	})
}

// readSlotCopy reads the position of the relay's slot on the standby and
// on the primary: the copy's first, so that it is not ahead of the
// primary's read.
func readSlotCopy(t *testing.T, pair *pgtest.Pair) slotCopy {
	t.Helper()
	var c slotCopy
	standby := pgtest.Connect(t, pair.Standby.URL("postgres"))
	if err := standby.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots
		WHERE slot_name = $1 AND synced`, slotName).Scan(&c.copyLSN); err != nil {
		t.Fatalf("the standby's copy of the relay's slot: %v", err)
	}
	primary := pgtest.Connect(t, pair.Primary.URL("postgres"))
	if err := primary.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text, pg_wal_lsn_diff(confirmed_flush_lsn, $2::pg_lsn)::bigint
		FROM pg_replication_slots WHERE slot_name = $1`, slotName, c.copyLSN).Scan(&c.primaryLSN, &c.behind); err != nil {
		t.Fatalf("the relay's slot on the primary: %v", err)
	}
	return c
}
