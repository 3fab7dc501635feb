package main

import (
	"fmt"
	"strings"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// The items of settings that only some PostgreSQL versions have: the idle
// timeout that invalidates slots (18+) and the failover slots a standby can
// keep (17+).

// idleTimeoutItem judges idle_replication_slot_timeout; ok is false on a
// server without it (before 18), where there is nothing to say.
func (c *checker) idleTimeoutItem() (it checkItem, ok bool) {
	it = checkItem{Name: "idle_replication_slot_timeout", replication: true}
	timeout := c.slotSettings.IdleSlotTimeout
	switch {
	case c.slotSettingsErr != nil:
		return unreadable(it.Name, "idle_replication_slot_timeout", c.slotSettingsErr), true
	case timeout == "":
		return it, false
	case timeout == "0":
		it.Status, it.Detail = checkOK, "0: a slot is never invalidated for idling"
	default:
		it.Status = checkWarn
		it.Detail = fmt.Sprintf("%s: a slot no relay streams from for %s (relays stopped that long, or RELAY_CDC=off) is invalidated at the next checkpoint; "+
			"the relay then makes a new slot and the sweeper delivers what the old one had not announced: nothing is lost but the slot's position", timeout, timeout)
		it.Fix = "keep it to bound the WAL a stopped relay's slot holds; to keep the slot through long stops: ALTER SYSTEM SET idle_replication_slot_timeout = 0; SELECT pg_reload_conf()"
	}
	return it, true
}

// failoverItem judges whether a standby can keep the relay's slot across a
// promotion: from PostgreSQL 17 on the relay makes it a failover slot, and
// synchronized_standby_slots keeps the relay from getting ahead of the
// standbys.
func (c *checker) failoverItem() checkItem {
	it := checkItem{Name: "failover", replication: true}
	name, sl, settings := c.cfg.SlotName, c.slot, c.slotSettings
	switch {
	case c.serverErr != nil:
		return unreadable(it.Name, "the server version", c.serverErr)
	case c.slotErr != nil:
		return unreadable(it.Name, "slot "+name, c.slotErr)
	case c.slotSettingsErr != nil:
		return unreadable(it.Name, "synchronized_standby_slots", c.slotSettingsErr)
	case c.server.VersionNum < 170000:
		it.Status = checkSkip
		it.Detail = fmt.Sprintf("PostgreSQL %d keeps no slot across a failover (failover slots are 17+): after one the relay makes a new slot on the promoted server "+
			"and the sweeper delivers what the old one had not announced", c.server.VersionNum/10000)
	case sl.Exists && sl.Failover != nil && !*sl.Failover:
		it.Status = checkWarn
		it.Detail = fmt.Sprintf("%s is not a failover slot: a promoted standby has no copy of it, and the relay makes a new slot there (the sweeper covers the gap)", name)
		it.Fix = fmt.Sprintf("with the relays stopped, SELECT pg_drop_replication_slot(%s); the relay makes it again as a failover slot", store.QuoteLiteral(name))
	case len(settings.PhysicalSlots) > 0 && settings.SynchronizedStandbySlots == "":
		it.Status = checkWarn
		it.Detail = fmt.Sprintf("standbys stream through %s but synchronized_standby_slots is empty: the relay can receive a change before a standby has it, "+
			"so after a failover to an asynchronous standby an event can have been delivered whose row the new primary lacks, and a standby's copy of the slot can lag",
			plural(len(settings.PhysicalSlots), "physical slot"))
		it.Fix = fmt.Sprintf("ALTER SYSTEM SET synchronized_standby_slots = %s; SELECT pg_reload_conf()", store.QuoteLiteral(strings.Join(settings.PhysicalSlots, ",")))
	default:
		it.Status = checkOK
		is := name + " is a failover slot"
		if !sl.Exists {
			is = "the relay makes " + name + " a failover slot"
		}
		it.Detail = is + ": a standby with sync_replication_slots = on, hot_standby_feedback = on, " +
			"primary_slot_name and a dbname in primary_conninfo keeps a copy that the relay streams on from after a promotion"
	}
	return it
}

// reasonSuffix names why the server invalidated a slot, where it says
// (PostgreSQL 17+).
func reasonSuffix(sl store.Slot) string {
	if sl.InvalidationReason == "" {
		return ""
	}
	return ", " + sl.InvalidationReason
}
