package cdc

import (
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// The readiness rules of the database's objects: the publication, the
// slot and what becomes of the slot in a failover.

// publicationRule judges whether the stream can set the publication up:
// it must publish inserts, and exist with the table or be one the role
// may create or extend. A publication that serves the outbox is judged
// further by publishedOutcomes.
var publicationRule = rule{
	item: "publication", objects: true,
	unread: func(f *Facts, c Config) (string, error) {
		return "publication " + c.Publication, f.PublicationErr
	},
	outcomes: append([]outcome{
		{when: func(f *Facts, _ Config) bool { return !f.Publication.Inserts }, status: StatusFail, lasting: true,
			detail: func(f *Facts, _ Config) string { return f.Publication.Name + " does not publish inserts" },
			fix: func(f *Facts, _ Config) string {
				return fmt.Sprintf("ALTER PUBLICATION %s SET (publish = 'insert')", pubIdent(f))
			}},
		{when: func(f *Facts, _ Config) bool { return !f.Publication.Exists && f.Publication.CanCreate }, status: StatusOK,
			detail: func(f *Facts, _ Config) string {
				p := f.Publication
				return fmt.Sprintf("%s does not exist yet; the relay creates it for %s (%s may)", p.Name, p.Table, p.User)
			}},
		{when: func(f *Facts, _ Config) bool { return !f.Publication.Exists }, status: StatusFail, lasting: true,
			detail: func(f *Facts, _ Config) string {
				p := f.Publication
				return fmt.Sprintf("%s does not exist and %s may not create it (it needs CREATE on the database and to own %s)", p.Name, p.User, p.Table)
			},
			fix: text("outbox-relay migrate (or check --fix) as the table's owner")},
		{when: func(f *Facts, _ Config) bool { return !f.Publication.HasTable && f.Publication.CanCreate }, status: StatusWarn,
			detail: func(f *Facts, _ Config) string {
				p := f.Publication
				return fmt.Sprintf("%s publishes %s but not %s; the relay will add %s to it", p.Name, tableList(f.Scope), p.Table, p.Table)
			},
			fix: text("set RELAY_PUBLICATION to a publication of the outbox alone (the relay creates it), unless sharing this one is meant")},
		{when: func(f *Facts, _ Config) bool { return !f.Publication.HasTable }, status: StatusFail, lasting: true,
			detail: func(f *Facts, _ Config) string {
				p := f.Publication
				return fmt.Sprintf("%s publishes %s but not %s, and %s may not add it (it must own the table)", p.Name, tableList(f.Scope), p.Table, p.User)
			},
			fix: func(f *Facts, _ Config) string {
				return fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s as the table's owner, or set RELAY_PUBLICATION to a publication of its own", pubIdent(f), f.Publication.Table.Ident())
			}},
	}, publishedOutcomes...),
}

// publishedOutcomes judge a publication that serves the outbox. The stream
// needs the table's updates and deletes besides its inserts, to send each
// row as committed (without them every row is claimed first); truncates
// and other tables are decoded for nothing.
var publishedOutcomes = []outcome{
	{when: func(f *Facts, _ Config) bool { return !f.Publication.Changes && !f.Publication.Identity }, status: StatusWarn,
		detail: func(f *Facts, _ Config) string {
			p := f.Publication
			return fmt.Sprintf("%s publishes inserts into %s, which has no replica identity to publish its updates with: every row is claimed before it is sent", p.Name, p.Table)
		},
		fix: func(f *Facts, _ Config) string {
			return fmt.Sprintf("give %s a primary key, then ALTER PUBLICATION %s SET (publish = 'insert, update, delete')", f.Publication.Table, pubIdent(f))
		}},
	{when: func(f *Facts, _ Config) bool { return !f.Publication.Changes && f.Publication.Alone }, status: StatusOK,
		detail: func(f *Facts, _ Config) string {
			p := f.Publication
			return fmt.Sprintf("%s publishes inserts into %s; the relay adds its updates and deletes when it starts (it owns the publication)", p.Name, p.Table)
		}},
	{when: func(f *Facts, _ Config) bool { return !f.Publication.Changes }, status: StatusWarn,
		detail: func(f *Facts, _ Config) string {
			p := f.Publication
			return fmt.Sprintf("%s publishes inserts into %s but not its updates and deletes, and serves other tables too: every row is claimed before it is sent", p.Name, p.Table)
		},
		fix: text(outboxAlone)},
	{when: func(f *Facts, _ Config) bool { return f.Scope.Truncates }, status: StatusWarn,
		detail: func(f *Facts, c Config) string {
			return published(f, c) + ", and truncates too: the relay does not use them, they are decoded for nothing"
		},
		fix: func(f *Facts, _ Config) string {
			return fmt.Sprintf("ALTER PUBLICATION %s SET (publish = 'insert, update, delete')", pubIdent(f))
		}},
	{when: func(f *Facts, _ Config) bool { return f.Scope.AllTables || len(otherTables(f)) > 0 }, status: StatusWarn,
		detail: func(f *Facts, c Config) string {
			return published(f, c) + fmt.Sprintf(", and %s too: their changes are decoded for nothing",
				tableList(store.PublicationScope{AllTables: f.Scope.AllTables, Tables: otherTables(f)}))
		},
		fix: text(outboxAlone)},
	{status: StatusOK, detail: published},
}

const outboxAlone = "set RELAY_PUBLICATION to a publication of the outbox alone (the relay creates it)"

func pubIdent(f *Facts) string { return pgx.Identifier{f.Publication.Name}.Sanitize() }

func published(f *Facts, _ Config) string {
	return fmt.Sprintf("%s publishes inserts, updates and deletes of %s", f.Publication.Name, f.Publication.Table)
}

// otherTables are the tables the publication serves besides the outbox.
func otherTables(f *Facts) []string {
	t := f.Publication.Table.String()
	return slices.DeleteFunc(slices.Clone(f.Scope.Tables), func(s string) bool { return s == t })
}

// tableList names what a publication publishes.
func tableList(s store.PublicationScope) string {
	switch {
	case s.AllTables:
		return "all tables"
	case len(s.Tables) == 0:
		return "no table"
	}
	return strings.Join(s.Tables, ", ")
}

// slotRule judges the slot: the stream makes a missing one, recreates a
// lost one and stands by while another relay streams from it; a slot of
// another kind, or one some other client streams from, keeps it out.
var slotRule = rule{
	item: "slot", objects: true,
	unread: func(f *Facts, c Config) (string, error) {
		if f.SlotErr != nil {
			return "slot " + c.Slot, f.SlotErr
		}
		return "the holder of slot " + c.Slot, f.HolderErr
	},
	outcomes: []outcome{
		{when: func(f *Facts, _ Config) bool { return !f.Slot.Exists }, status: StatusOK,
			detail: func(_ *Facts, c Config) string { return c.Slot + " does not exist; the relay creates it" }},
		{when: func(f *Facts, _ Config) bool { return !SlotFits(f.Slot) }, status: StatusFail, lasting: true,
			detail: func(f *Facts, c Config) string {
				sl := f.Slot
				return fmt.Sprintf("%s exists but is not a pgoutput logical slot of database %s (%s, %s, %s)",
					c.Slot, sl.CurrentDatabase, sl.SlotType, sl.Plugin, sl.Database)
			},
			fix: func(_ *Facts, c Config) string {
				return fmt.Sprintf("SELECT pg_drop_replication_slot(%s), or set RELAY_SLOT_NAME to another name", store.QuoteLiteral(c.Slot))
			}},
		{when: func(f *Facts, _ Config) bool { return f.Slot.Active && f.Holder.ApplicationName == ApplicationName }, status: StatusWarn,
			detail: func(f *Facts, c Config) string {
				return fmt.Sprintf("%s is in use by another relay (%s); this one will stand by and take over when it stops", c.Slot, describeSession(f.Holder))
			}},
		{when: func(f *Facts, _ Config) bool { return f.Slot.Active }, status: StatusFail,
			detail: func(f *Facts, c Config) string {
				return fmt.Sprintf("%s is held by %s, which is not a relay", c.Slot, describeSession(f.Holder))
			},
			fix: func(f *Facts, _ Config) string {
				return fmt.Sprintf("stop that client, or end it: SELECT pg_terminate_backend(%d)", f.Holder.PID)
			}},
		{when: func(f *Facts, _ Config) bool { return f.Slot.WALStatus == "lost" }, status: StatusWarn,
			detail: func(f *Facts, c Config) string {
				reason := ""
				if f.Slot.InvalidationReason != "" { // PostgreSQL 17+
					reason = ", " + f.Slot.InvalidationReason
				}
				return fmt.Sprintf("%s was invalidated (wal_status lost%s); the relay recreates it and the sweeper covers the gap", c.Slot, reason)
			}},
		{status: StatusOK, detail: func(f *Facts, c Config) string {
			return fmt.Sprintf("%s exists, inactive; the relay resumes from %s", c.Slot, f.Slot.ConfirmedFlushLSN)
		}},
	},
}

// describeSession names a process by what pg_stat_activity shows of it.
func describeSession(s store.Session) string {
	parts := []string{fmt.Sprintf("pid %d", s.PID)}
	if s.ApplicationName != "" {
		parts = append(parts, fmt.Sprintf("application_name %q", s.ApplicationName))
	}
	if s.User != "" {
		parts = append(parts, "user "+s.User)
	}
	if s.ClientAddr != "" {
		parts = append(parts, "client "+s.ClientAddr)
	}
	return strings.Join(parts, ", ")
}

// failoverRule judges whether a standby can keep the slot across a
// promotion: from PostgreSQL 17 on the stream makes it a failover slot,
// and synchronized_standby_slots keeps the relay from getting ahead of the
// standbys.
var failoverRule = rule{
	item: "failover", objects: true,
	unread: func(f *Facts, c Config) (string, error) {
		switch {
		case f.ServerErr != nil:
			return "the server version", f.ServerErr
		case f.SlotErr != nil:
			return "slot " + c.Slot, f.SlotErr
		}
		return "synchronized_standby_slots", f.SlotSettingsErr
	},
	outcomes: []outcome{
		{when: func(f *Facts, _ Config) bool { return f.Server.VersionNum < 170000 }, status: StatusSkip,
			detail: func(f *Facts, _ Config) string {
				return fmt.Sprintf("PostgreSQL %d keeps no slot across a failover (failover slots are 17+): after one the relay makes a new slot on the promoted server "+
					"and the sweeper delivers what the old one had not announced", f.Server.VersionNum/10000)
			}},
		{when: func(f *Facts, _ Config) bool { return f.Slot.Exists && f.Slot.Failover != nil && !*f.Slot.Failover }, status: StatusWarn,
			detail: func(_ *Facts, c Config) string {
				return c.Slot + " is not a failover slot: a promoted standby has no copy of it, and the relay makes a new slot there (the sweeper covers the gap)"
			},
			fix: func(_ *Facts, c Config) string {
				return fmt.Sprintf("with the relays stopped, SELECT pg_drop_replication_slot(%s); the relay makes it again as a failover slot", store.QuoteLiteral(c.Slot))
			}},
		{when: unsyncedStandbys, status: StatusWarn, detail: unsyncedDetail,
			fix: func(f *Facts, _ Config) string {
				return fmt.Sprintf("ALTER SYSTEM SET synchronized_standby_slots = %s; SELECT pg_reload_conf()",
					store.QuoteLiteral(strings.Join(f.SlotSettings.PhysicalSlots, ",")))
			}},
		{status: StatusOK, detail: func(f *Facts, c Config) string {
			is := c.Slot + " is a failover slot"
			if !f.Slot.Exists {
				is = "the relay makes " + c.Slot + " a failover slot"
			}
			return is + ": a standby with sync_replication_slots = on, hot_standby_feedback = on, " +
				"primary_slot_name and a dbname in primary_conninfo keeps a copy that the relay streams on from after a promotion"
		}},
	},
}

func unsyncedStandbys(f *Facts, _ Config) bool {
	return len(f.SlotSettings.PhysicalSlots) > 0 && f.SlotSettings.SynchronizedStandbySlots == ""
}

func unsyncedDetail(f *Facts, _ Config) string {
	slots := "1 physical slot"
	if n := len(f.SlotSettings.PhysicalSlots); n != 1 {
		slots = fmt.Sprintf("%d physical slots", n)
	}
	return fmt.Sprintf("standbys stream through %s but synchronized_standby_slots is empty: the relay can receive a change before a standby has it, "+
		"so after a failover to an asynchronous standby an event can have been delivered whose row the new primary lacks, and a standby's copy of the slot can lag", slots)
}
