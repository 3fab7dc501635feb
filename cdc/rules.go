package cdc

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// The readiness rules of the server and the role (readiness.go says how
// they are judged).

var walLevelRule = rule{
	item: "wal_level",
	unread: func(f *Facts, _ Config) (string, error) {
		return "wal_level", f.SettingsErr
	},
	outcomes: []outcome{
		{when: func(f *Facts, _ Config) bool { return f.Settings.WALLevel != "logical" }, status: StatusFail, lasting: true,
			detail: func(f *Facts, _ Config) string { return f.Settings.WALLevel + "; the fast path needs logical" },
			fix:    text("ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL")},
		{status: StatusOK, detail: text("logical")},
	},
}

// capacityRule judges the free replication slots and WAL senders: the
// relay needs a slot unless its own exists, and a sender unless another
// relay already streams from that slot. A slot short lasts (the slots
// that exist are kept); busy senders pass, unless there are none at all.
var capacityRule = rule{
	item: "replication_slots",
	unread: func(f *Facts, _ Config) (string, error) {
		switch {
		case f.SettingsErr != nil:
			return "max_replication_slots", f.SettingsErr
		case f.ServerErr != nil:
			return "the WAL senders", f.ServerErr
		}
		return "the replication slots", f.SlotErr
	},
	outcomes: []outcome{
		{when: func(f *Facts, _ Config) bool { return !f.Slot.Exists && freeSlots(f) < 1 }, status: StatusFail, lasting: true,
			detail: capacity, fix: text("raise max_replication_slots (a restart), or drop an unused slot")},
		{when: func(f *Facts, _ Config) bool { return !f.Slot.Active && f.Settings.MaxSenders == 0 }, status: StatusFail, lasting: true,
			detail: capacity, fix: text("raise max_wal_senders (a restart)")},
		{when: func(f *Facts, _ Config) bool { return !f.Slot.Active && freeSenders(f) < 1 }, status: StatusFail,
			detail: capacity, fix: text("raise max_wal_senders (a restart)")},
		{status: StatusOK, detail: capacity},
	},
}

func freeSlots(f *Facts) int   { return f.Settings.MaxSlots - f.Settings.UsedSlots }
func freeSenders(f *Facts) int { return f.Settings.MaxSenders - f.Server.WALSenders }

func capacity(f *Facts, _ Config) string {
	return fmt.Sprintf("%d of max_replication_slots = %d free, %d of max_wal_senders = %d free",
		freeSlots(f), f.Settings.MaxSlots, freeSenders(f), f.Settings.MaxSenders)
}

var keepSizeRule = rule{
	item: "max_slot_wal_keep_size",
	unread: func(f *Facts, _ Config) (string, error) {
		return "max_slot_wal_keep_size", f.SlotErr
	},
	outcomes: []outcome{
		{when: func(f *Facts, _ Config) bool { return f.Slot.MaxSlotWALKeepSize == "-1" }, status: StatusWarn,
			detail: text("-1 (unlimited): while the relay is down, its slot keeps WAL until the disk is full"),
			fix:    text("ALTER SYSTEM SET max_slot_wal_keep_size = '4GB'; SELECT pg_reload_conf()")},
		{status: StatusOK, detail: func(f *Facts, _ Config) string {
			return f.Slot.MaxSlotWALKeepSize + " (the cap on WAL a slot keeps while the relay is down)"
		}},
	},
}

// idleTimeoutRule judges idle_replication_slot_timeout, which servers
// before 18 lack: there it says nothing.
var idleTimeoutRule = rule{
	item: "idle_replication_slot_timeout",
	unread: func(f *Facts, _ Config) (string, error) {
		return "idle_replication_slot_timeout", f.SlotSettingsErr
	},
	outcomes: []outcome{
		{when: func(f *Facts, _ Config) bool { return f.SlotSettings.IdleSlotTimeout == "" }},
		{when: func(f *Facts, _ Config) bool { return f.SlotSettings.IdleSlotTimeout == "0" }, status: StatusOK,
			detail: text("0: a slot is never invalidated for idling")},
		{status: StatusWarn, detail: func(f *Facts, _ Config) string {
			timeout := f.SlotSettings.IdleSlotTimeout
			return fmt.Sprintf("%s: a slot no relay streams from for %s (relays stopped that long, or RELAY_CDC=off) is invalidated at the next checkpoint; "+
				"the relay then makes a new slot and the sweeper delivers what the old one had not announced: nothing is lost but the slot's position", timeout, timeout)
		},
			fix: text("keep it to bound the WAL a stopped relay's slot holds; to keep the slot through long stops: ALTER SYSTEM SET idle_replication_slot_timeout = 0; SELECT pg_reload_conf()")},
	},
}

var roleRule = rule{
	item: "role",
	unread: func(f *Facts, _ Config) (string, error) {
		return "the role's attributes", f.SettingsErr
	},
	outcomes: []outcome{
		{when: func(f *Facts, _ Config) bool { return !f.Settings.CanReplicate }, status: StatusFail, lasting: true,
			detail: func(f *Facts, _ Config) string {
				return f.Settings.User + " has neither REPLICATION nor superuser"
			},
			fix: func(f *Facts, _ Config) string {
				return fmt.Sprintf("ALTER ROLE %s REPLICATION (as a superuser)", pgx.Identifier{f.Settings.User}.Sanitize())
			}},
		{status: StatusOK, detail: func(f *Facts, _ Config) string {
			return f.Settings.User + " may replicate (REPLICATION or superuser)"
		}},
	},
}

// replConnRule judges the replication connection (Facts.Probe), since
// pg_hba.conf may refuse one to a role that may replicate. A refusal for
// want of a WAL sender or while the server starts passes; pg_hba.conf and
// authentication last.
var replConnRule = rule{
	item: "replication_connection",
	outcomes: []outcome{
		{when: func(f *Facts, _ Config) bool { return f.SettingsErr != nil || !f.Settings.CanReplicate }, status: StatusSkip,
			detail: text("not tried: the role may not replicate")},
		{when: refusedForGood, status: StatusFail, lasting: true, detail: refusal, fix: pgHBAFix},
		{when: func(f *Facts, _ Config) bool { return f.ReplConn != nil }, status: StatusFail, detail: refusal, fix: pgHBAFix},
		{status: StatusOK, detail: text("accepted (IDENTIFY_SYSTEM)")},
	},
}

// refusedForGood reports whether the replication connection was refused
// for a reason only the operator can change.
func refusedForGood(f *Facts, _ Config) bool {
	var un *errUnavailable
	return errors.As(f.ReplConn, &un)
}

func refusal(f *Facts, _ Config) string { return f.ReplConn.Error() }

var pgHBAFix = text("add a pg_hba.conf line for the role and database (host <db> <role> <address> scram-sha-256), then SELECT pg_reload_conf()")
