package cdc

import (
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// The decisions over what store reads, driven with literal structs: no
// server needed.

var (
	decideCfg = Config{Schema: "public", Table: "portal_event_outbox", Slot: "outbox_relay", Publication: "outbox_relay"}
	goodSlot  = store.Slot{
		Name: "outbox_relay", Exists: true, SlotType: "logical", Plugin: "pgoutput",
		Database: "app", CurrentDatabase: "app", ConfirmedFlushLSN: "0/16B3748", WALStatus: "reserved",
	}
	goodSettings = store.ReplicationSettings{WALLevel: "logical", User: "relay", CanReplicate: true, MaxSlots: 10, MaxSenders: 10, UsedSlots: 1}
)

// wantErr checks err against want: "" for no error, else a part of its text.
func wantErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("error %q, want none", err)
	case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
		t.Errorf("error %v, want one containing %q", err, want)
	}
}

func TestCheckSettings(t *testing.T) {
	t.Parallel()
	with := func(f func(*store.ReplicationSettings, *store.Slot)) (store.ReplicationSettings, store.Slot) {
		st, sl := goodSettings, goodSlot
		f(&st, &sl)
		return st, sl
	}
	for _, tc := range []struct {
		name string
		edit func(*store.ReplicationSettings, *store.Slot)
		want string
	}{
		{"all good", func(*store.ReplicationSettings, *store.Slot) {}, ""},
		{"wal_level replica", func(st *store.ReplicationSettings, _ *store.Slot) { st.WALLevel = "replica" },
			"wal_level is replica; logical replication needs wal_level = logical (and a server restart)"},
		{"role cannot replicate", func(st *store.ReplicationSettings, _ *store.Slot) { st.CanReplicate, st.User = false, "app user" },
			`role app user has neither the REPLICATION attribute nor superuser (ALTER ROLE "app user" REPLICATION)`},
		{"no WAL sender", func(st *store.ReplicationSettings, _ *store.Slot) { st.MaxSenders = 0 },
			"max_wal_senders is 0; logical replication needs at least one WAL sender"},
		{"slot of another database", func(_ *store.ReplicationSettings, sl *store.Slot) { sl.Database = "other" },
			"replication slot outbox_relay exists but is not a pgoutput logical slot of this database (logical, pgoutput, other); drop it or choose another RELAY_SLOT_NAME"},
		{"physical slot", func(_ *store.ReplicationSettings, sl *store.Slot) {
			sl.SlotType, sl.Plugin, sl.Database = "physical", "", ""
		},
			"not a pgoutput logical slot of this database (physical, , )"},
		{"no free slot", func(st *store.ReplicationSettings, sl *store.Slot) {
			*sl = store.Slot{Name: "outbox_relay"}
			st.UsedSlots = st.MaxSlots
		}, "no free replication slot for outbox_relay: max_replication_slots = 10 and 10 are in use"},
		{"every slot used, ours among them", func(st *store.ReplicationSettings, _ *store.Slot) { st.UsedSlots = st.MaxSlots }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, sl := with(tc.edit)
			wantErr(t, checkSettings(st, sl, decideCfg), tc.want)
		})
	}
}

func TestCheckPublication(t *testing.T) {
	t.Parallel()
	base := store.Publication{Name: "outbox_relay", Table: decideCfg.table(), User: "app", Inserts: true}
	for _, tc := range []struct {
		name                                 string
		exists, hasTable, inserts, canCreate bool
		want                                 string
	}{
		{"complete", true, true, true, false, ""},
		{"missing, role may create it", false, false, true, true, ""},
		{"lacks the table, role may add it", true, false, true, true, ""},
		{"missing", false, false, true, false,
			"publication outbox_relay does not exist and role app cannot create it (it needs CREATE on the database and to own public.portal_event_outbox); run outbox-relay migrate as the table's owner"},
		{"lacks the table", true, false, true, false,
			"publication outbox_relay does not include public.portal_event_outbox and role app cannot add it (it must own the table)"},
		{"no inserts", true, true, false, true,
			`publication outbox_relay does not publish inserts (ALTER PUBLICATION "outbox_relay" SET (publish = 'insert'))`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := base
			p.Exists, p.HasTable, p.Inserts, p.CanCreate = tc.exists, tc.hasTable, tc.inserts, tc.canCreate
			wantErr(t, checkPublication(p), tc.want)
		})
	}
}

func TestStartFrom(t *testing.T) {
	t.Parallel()
	lsn, err := pglogrepl.ParseLSN(goodSlot.ConfirmedFlushLSN)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		edit   func(*store.Slot)
		broken bool
		want   startPoint
		err    string
	}{
		{"no slot: make it", func(sl *store.Slot) { *sl = store.Slot{Name: sl.Name} }, false, startPoint{create: true}, ""},
		{"no slot, broken: make it", func(sl *store.Slot) { *sl = store.Slot{Name: sl.Name} }, true, startPoint{create: true}, ""},
		{"from the confirmed position", func(*store.Slot) {}, false, startPoint{lsn: lsn}, ""},
		{"invalidated: drop and make again", func(sl *store.Slot) { sl.WALStatus = "lost" }, false, startPoint{create: true, drop: true}, ""},
		{"broken: drop and make again", func(*store.Slot) {}, true, startPoint{create: true, drop: true}, ""},
		{"another plugin", func(sl *store.Slot) { sl.Plugin = "test_decoding" }, false, startPoint{},
			"slot outbox_relay exists but is not a pgoutput logical slot of database app (logical, test_decoding, app); drop it or set RELAY_SLOT_NAME"},
		{"a bad position", func(sl *store.Slot) { sl.ConfirmedFlushLSN = "nonsense" }, false, startPoint{}, "confirmed_flush_lsn"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sl := goodSlot
			tc.edit(&sl)
			got, err := startFrom(sl, tc.broken)
			wantErr(t, err, tc.err)
			if got != tc.want {
				t.Errorf("start point %+v, want %+v", got, tc.want)
			}
		})
	}
}

// A slot held by another process makes a standby, naming the holder.
func TestStartFromActiveSlotStandsBy(t *testing.T) {
	t.Parallel()
	sl := goodSlot
	sl.Active, sl.ActivePID = true, 4242
	_, err := startFrom(sl, true)
	var sb *errStandby
	if !errors.As(err, &sb) || sb.pid != 4242 {
		t.Fatalf("error %v, want errStandby for pid 4242", err)
	}
	if want := "replication slot is in use by another process (pid 4242)"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

// Ids the stream drops are the sweeper's: the stream nudges it to sweep
// with its usual grace, and neither wakes it to take fresh rows nor stops
// counting as streaming, so the sweep does not claim beside a stream that
// is behind.
func TestDroppedIDsNudgeTheSweeper(t *testing.T) {
	s := New(decideCfg, nil, slog.New(slog.DiscardHandler))
	s.streaming.Store(true)
	s.shed(false, 3)
	select {
	case <-s.Dropped():
		t.Fatal("nudged by a hand-off that was taken")
	default:
	}
	s.shed(true, 3)
	select {
	case <-s.Dropped():
	default:
		t.Fatal("dropped ids did not nudge the sweeper")
	}
	select {
	case <-s.Wake():
		t.Error("a drop woke the sweeper to take fresh rows")
	default:
	}
	if !s.Streaming() {
		t.Error("not streaming after a drop: the sweep would claim fresh rows beside the stream")
	}
}
