package pgtest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// A synchronous pair: a commit on the primary is on the standby once it
// returns, the two-host URL reaches the primary, and after the primary
// crashes and the standby is promoted it reaches the new primary, which
// has the row.
func TestPairPromote(t *testing.T) {
	p := pgtest.StartPair(t, true)
	ctx := context.Background()
	conn := pgtest.Connect(t, p.URL("postgres"))
	if _, err := conn.Exec(ctx, `CREATE TABLE t (id int); INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	if got := queryString(t, conn, `SELECT current_setting('port')`); got != fmt.Sprint(p.Primary.Port()) {
		t.Errorf("the two-host URL reached port %s, want the primary's %d", got, p.Primary.Port())
	}
	if err := p.Primary.StopServer("immediate"); err != nil {
		t.Fatal(err)
	}
	if err := p.Promote(); err != nil {
		t.Fatal(err)
	}
	after := pgtest.Connect(t, p.URL("postgres"))
	if got := queryString(t, after, `SELECT current_setting('port')`); got != fmt.Sprint(p.Standby.Port()) {
		t.Errorf("after the promotion the two-host URL reached port %s, want the standby's %d", got, p.Standby.Port())
	}
	if got := queryString(t, after, `SELECT count(*)::text FROM t`); got != "1" {
		t.Errorf("the promoted standby has %s rows of the synchronously committed 1", got)
	}
	if got := queryString(t, after, `SELECT pg_is_in_recovery()::text`); got != "false" {
		t.Errorf("pg_is_in_recovery() = %s after Promote", got)
	}
}

// An asynchronous pair streams too, with sync_state async.
func TestPairAsync(t *testing.T) {
	p := pgtest.StartPair(t, false)
	conn := pgtest.Connect(t, p.Primary.URL("postgres"))
	if got := queryString(t, conn, `SELECT sync_state FROM pg_stat_replication`); got != "async" {
		t.Errorf("sync_state %s, want async", got)
	}
}

// With WithSlotSync the standby keeps a copy of the primary's failover
// logical slot, persistent and marked synced, that stays after a
// promotion.
func TestPairSlotSync(t *testing.T) {
	pgtest.SkipBelow(t, 17, "standbys synchronize failover slots (sync_replication_slots) from 17 on")
	p := pgtest.StartPair(t, true, pgtest.WithSlotSync())
	primary := pgtest.Connect(t, p.Primary.URL("postgres"))
	if _, err := primary.Exec(context.Background(),
		`SELECT pg_create_logical_replication_slot('kept', 'pgoutput', false, false, true)`); err != nil {
		t.Fatal(err)
	}
	standby := pgtest.Connect(t, p.Standby.URL("postgres"))
	pgtest.WaitFor(t, time.Minute, "the standby to keep a synced, persistent copy of the slot", func() bool {
		var synced, temporary bool
		err := standby.QueryRow(context.Background(),
			`SELECT synced, temporary FROM pg_replication_slots WHERE slot_name = 'kept'`).Scan(&synced, &temporary)
		return err == nil && synced && !temporary
	})
	if err := p.Primary.StopServer("fast"); err != nil {
		t.Fatal(err)
	}
	if err := p.Promote(); err != nil {
		t.Fatal(err)
	}
	after := pgtest.Connect(t, p.Standby.URL("postgres"))
	if got := queryString(t, after, `SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = 'kept' AND slot_type = 'logical'`); got != "1" {
		t.Errorf("the promoted standby has %s copies of the failover slot, want 1", got)
	}
}
