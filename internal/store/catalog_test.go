package store

import (
	"context"
	"testing"
)

// Migrate and the stream make the publication one way: created with the
// table's inserts, updates and deletes when missing, the table added when
// it is left out, updates and deletes added to an insert-only publication
// of the table alone, nothing when complete.
func TestEnsurePublication(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := setup(t)
	conn, table := st.pool, st.Table()
	ensure := func(wantChanged bool) Publication {
		t.Helper()
		p, err := ReadPublication(ctx, conn, "outbox_relay", table)
		if err != nil {
			t.Fatal(err)
		}
		changed, err := EnsurePublication(ctx, conn, p)
		if err != nil || changed != wantChanged {
			t.Fatalf("EnsurePublication(%+v) = %v, %v; want changed %v", p, changed, err, wantChanged)
		}
		return p
	}
	if p := ensure(true); p.Exists || !p.Inserts || !p.CanCreate {
		t.Errorf("before: %+v; want missing, inserts (as it will be made), may be created", p)
	}
	if p := ensure(false); !p.Exists || !p.HasTable || !p.Inserts {
		t.Errorf("after: %+v; want complete", p)
	}
	var ins, upd, del bool
	if err := conn.QueryRow(ctx, `SELECT pubinsert, pubupdate, pubdelete FROM pg_publication WHERE pubname = 'outbox_relay'`).Scan(&ins, &upd, &del); err != nil || !ins || !upd || !del {
		t.Errorf("publishes insert %v, update %v, delete %v (%v); want all three", ins, upd, del, err)
	}
	if _, err := conn.Exec(ctx, `ALTER PUBLICATION outbox_relay SET (publish = 'insert')`); err != nil {
		t.Fatal(err)
	}
	if p := ensure(true); p.Changes || !p.Alone || !p.Identity {
		t.Errorf("insert-only: %+v; want no changes published, the table alone, with an identity", p)
	}
	if p := ensure(false); !p.Changes {
		t.Errorf("after: %+v; want changes published", p)
	}

	// A publication of that name without the table gets it added.
	if _, err := conn.Exec(ctx, `CREATE TABLE other (id int); CREATE PUBLICATION elsewhere FOR TABLE other`); err != nil {
		t.Fatal(err)
	}
	p, err := ReadPublication(ctx, conn, "elsewhere", table)
	if err != nil || !p.Exists || p.HasTable {
		t.Fatalf("elsewhere: %+v, %v", p, err)
	}
	if changed, err := EnsurePublication(ctx, conn, p); err != nil || !changed {
		t.Fatalf("add the table: %v, %v", changed, err)
	}
	// Shared with another table, it keeps what it publishes: updates of
	// that table might have no replica identity to publish them with.
	if _, err := conn.Exec(ctx, `ALTER PUBLICATION elsewhere SET (publish = 'insert')`); err != nil {
		t.Fatal(err)
	}
	if p, err = ReadPublication(ctx, conn, "elsewhere", table); err != nil || p.Alone || p.Changes {
		t.Fatalf("elsewhere with the table: %+v, %v; want shared, inserts only", p, err)
	}
	if changed, err := EnsurePublication(ctx, conn, p); err != nil || changed {
		t.Fatalf("a shared publication: changed %v, %v; want it left alone", changed, err)
	}
	// Whoever read the same state a moment ago and acts on it finds the
	// work done, which is not an error.
	if changed, err := EnsurePublication(ctx, conn, p); err != nil || changed {
		t.Errorf("add the table again: %v, %v; want nothing changed, no error", changed, err)
	}
	missing := Publication{Name: "outbox_relay", Table: table}
	if changed, err := EnsurePublication(ctx, conn, missing); err != nil || changed {
		t.Errorf("create it again: %v, %v; want nothing changed, no error", changed, err)
	}
}

// One read serves the stream, the check, status and the guard.
func TestSlotInfo(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := setup(t).pool
	if sl, err := SlotInfo(ctx, conn, "catalog_slot"); err != nil || sl.Exists || sl.Name != "catalog_slot" || sl.WALLevel != "logical" {
		t.Fatalf("no slot yet: %+v, %v", sl, err)
	}
	if err := DropIdleSlot(ctx, conn, "catalog_slot"); err != nil {
		t.Errorf("drop a slot that does not exist: %v", err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot('catalog_slot', 'pgoutput')`); err != nil {
		t.Fatal(err)
	}
	sl, err := SlotInfo(ctx, conn, "catalog_slot")
	if err != nil || !sl.Exists || sl.Active || sl.SlotType != "logical" || sl.Plugin != "pgoutput" ||
		sl.Database == "" || sl.Database != sl.CurrentDatabase || sl.ConfirmedFlushLSN == "0/0" || sl.MaxSlotWALKeepSize == "" {
		t.Fatalf("slot: %+v, %v", sl, err)
	}
	if err := DropSlot(ctx, conn, "catalog_slot"); err != nil {
		t.Fatal(err)
	}
	if sl, err := SlotInfo(ctx, conn, "catalog_slot"); err != nil || sl.Exists {
		t.Errorf("after DropSlot: %+v, %v", sl, err)
	}
}

func TestQuoteLiteral(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"": "''", "outbox_relay": "'outbox_relay'", "it's": "'it''s'", `a\b`: `E'a\\b'`, `\'`: `E'\\'''`} {
		if got := QuoteLiteral(in); got != want {
			t.Errorf("QuoteLiteral(%q) = %s, want %s", in, got, want)
		}
	}
}
