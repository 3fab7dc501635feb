package cdc

import (
	"errors"
	"strings"
	"testing"

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

// readyFacts are the facts of a server the stream can use.
func readyFacts() Facts {
	return Facts{
		Server:      store.Server{Version: "17.2", VersionNum: 170002, WALSenders: 1},
		Settings:    goodSettings,
		Slot:        goodSlot,
		Publication: store.Publication{Name: "outbox_relay", Table: decideCfg.table(), User: "app", Exists: true, HasTable: true, Inserts: true, Changes: true, Alone: true, Identity: true},
		Scope:       store.PublicationScope{Updates: true, Deletes: true, Tables: []string{"public.portal_event_outbox"}},
	}
}

// wantJudged checks what the stream's check makes of f: want is "" for no
// error, else the whole line; lasting whether the server is unavailable.
func wantJudged(t *testing.T, f Facts, want string, lasting bool) {
	t.Helper()
	err := judged(f, decideCfg)
	wantErr(t, err, want)
	if err != nil && err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	var un *errUnavailable
	if err != nil && errors.As(err, &un) != lasting {
		t.Errorf("error %q: unavailable %t, want %t", err, !lasting, lasting)
	}
}

func TestJudgeSettings(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		edit    func(*Facts)
		want    string
		lasting bool
	}{
		{"all good", func(*Facts) {}, "", false},
		{"wal_level replica", func(f *Facts) { f.Settings.WALLevel = "replica" },
			"wal_level: replica; the fast path needs logical (fix: ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)", true},
		{"role cannot replicate", func(f *Facts) { f.Settings.CanReplicate, f.Settings.User = false, "app user" },
			`role: app user has neither REPLICATION nor superuser (fix: ALTER ROLE "app user" REPLICATION (as a superuser))`, true},
		{"no WAL sender", func(f *Facts) { f.Settings.MaxSenders, f.Server.WALSenders = 0, 0 },
			"replication_slots: 9 of max_replication_slots = 10 free, 0 of max_wal_senders = 0 free (fix: raise max_wal_senders (a restart))", true},
		{"every WAL sender busy", func(f *Facts) { f.Server.WALSenders = f.Settings.MaxSenders },
			"replication_slots: 9 of max_replication_slots = 10 free, 0 of max_wal_senders = 10 free (fix: raise max_wal_senders (a restart))", false},
		{"slot of another database", func(f *Facts) { f.Slot.Database = "other" },
			"slot: outbox_relay exists but is not a pgoutput logical slot of database app (logical, pgoutput, other) (fix: SELECT pg_drop_replication_slot('outbox_relay'), or set RELAY_SLOT_NAME to another name)", true},
		{"no free slot", func(f *Facts) {
			f.Slot = store.Slot{Name: "outbox_relay"}
			f.Settings.UsedSlots = f.Settings.MaxSlots
		}, "replication_slots: 0 of max_replication_slots = 10 free, 9 of max_wal_senders = 10 free (fix: raise max_replication_slots (a restart), or drop an unused slot)", true},
		{"every slot used, ours among them", func(f *Facts) { f.Settings.UsedSlots = f.Settings.MaxSlots }, "", false},
		{"slot held by another client", func(f *Facts) {
			f.Slot.Active, f.Holder = true, store.Session{PID: 42, ApplicationName: "pg_recvlogical"}
		}, `slot: outbox_relay is held by pid 42, application_name "pg_recvlogical", which is not a relay (fix: stop that client, or end it: SELECT pg_terminate_backend(42))`, false},
		{"slot held by another relay", func(f *Facts) {
			f.Slot.Active, f.Holder = true, store.Session{PID: 42, ApplicationName: ApplicationName}
		}, "", false},
		{"pg_hba.conf refuses", func(f *Facts) { f.ReplConn = &errUnavailable{errors.New("no pg_hba.conf entry")} },
			"replication_connection: no pg_hba.conf entry (fix: add a pg_hba.conf line for the role and database (host <db> <role> <address> scram-sha-256), then SELECT pg_reload_conf())", true},
		{"settings unreadable", func(f *Facts) { f.SettingsErr = errors.New("permission denied") },
			"wal_level: cannot read wal_level: permission denied", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := readyFacts()
			tc.edit(&f)
			wantJudged(t, f, tc.want, tc.lasting)
		})
	}
}

func TestJudgePublication(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name                                 string
		exists, hasTable, inserts, canCreate bool
		want                                 string
	}{
		{"complete", true, true, true, false, ""},
		{"missing, role may create it", false, false, true, true, ""},
		{"lacks the table, role may add it", true, false, true, true, ""},
		{"missing", false, false, true, false,
			"publication: outbox_relay does not exist and app may not create it (it needs CREATE on the database and to own public.portal_event_outbox) (fix: outbox-relay migrate (or check --fix) as the table's owner)"},
		{"lacks the table", true, false, true, false,
			`publication: outbox_relay publishes public.other but not public.portal_event_outbox, and app may not add it (it must own the table) (fix: ALTER PUBLICATION "outbox_relay" ADD TABLE "public"."portal_event_outbox" as the table's owner, or set RELAY_PUBLICATION to a publication of its own)`},
		{"no inserts", true, true, false, true,
			`publication: outbox_relay does not publish inserts (fix: ALTER PUBLICATION "outbox_relay" SET (publish = 'insert'))`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := readyFacts()
			p := &f.Publication
			p.Exists, p.HasTable, p.Inserts, p.CanCreate = tc.exists, tc.hasTable, tc.inserts, tc.canCreate
			if !tc.hasTable {
				f.Scope.Tables = []string{"public.other"}
			}
			wantJudged(t, f, tc.want, tc.want != "")
		})
	}
}
