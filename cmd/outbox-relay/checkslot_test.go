package main

import (
	"context"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// check's lines on the settings of some versions only: a relay's slot
// that is not a failover slot and standbys without
// synchronized_standby_slots (17+), idle_replication_slot_timeout (18+);
// on older servers the failover line says a failover costs a new slot, and
// there is no idle timeout line.
func TestCheckVersionSettings(t *testing.T) {
	c := &checkCluster{Cluster: pgtest.StartT(t, pgtest.WithSetting("max_slot_wal_keep_size", "1GB"))}
	major, err := pgtest.ServerMajor()
	if err != nil {
		t.Fatal(err)
	}
	runner := newCheckRunner(t)
	u := c.newDB(t)
	if code, _, stderr := runCmd(t, context.Background(), []string{"RELAY_DATABASE_URL=" + u}, "migrate"); code != 0 {
		t.Fatal(stderr)
	}
	env := checkEnv(u, runner.URL())
	admin := c.URL("postgres")

	if major < 17 {
		out := wantCheck(t, env, exitOK, failoverLine(major))
		if strings.Contains(out, "idle_replication_slot_timeout") {
			t.Errorf("PostgreSQL %d has no idle_replication_slot_timeout, but check speaks of it:\n%s", major, out)
		}
		return
	}

	// A slot made by hand (or by a relay on 16 before an upgrade).
	adminExec(t, u, `SELECT pg_create_logical_replication_slot('outbox_relay', 'pgoutput', false, false, false)`)
	wantCheck(t, env, exitOK,
		"! failover: outbox_relay is not a failover slot: a promoted standby has no copy of it, and the relay makes a new slot there (the sweeper covers the gap)",
		"    fix: with the relays stopped, SELECT pg_drop_replication_slot('outbox_relay'); the relay makes it again as a failover slot")
	adminExec(t, u, `SELECT pg_drop_replication_slot('outbox_relay')`)

	adminExec(t, admin, `SELECT pg_create_physical_replication_slot('standby_a')`)
	wantCheck(t, env, exitOK,
		"! failover: standbys stream through 1 physical slot but synchronized_standby_slots is empty: …",
		"    fix: ALTER SYSTEM SET synchronized_standby_slots = 'standby_a'; SELECT pg_reload_conf()")
	adminExec(t, admin, `ALTER SYSTEM SET synchronized_standby_slots = 'standby_a'`)
	adminExec(t, admin, `SELECT pg_reload_conf()`)
	wantCheck(t, env, exitOK, failoverLine(major))

	if major < 18 {
		if out := wantCheck(t, env, exitOK); strings.Contains(out, "idle_replication_slot_timeout") {
			t.Errorf("PostgreSQL %d has no idle_replication_slot_timeout, but check speaks of it:\n%s", major, out)
		}
		return
	}
	adminExec(t, admin, `ALTER SYSTEM SET idle_replication_slot_timeout = '1h'`)
	adminExec(t, admin, `SELECT pg_reload_conf()`)
	wantCheck(t, env, exitOK,
		"! idle_replication_slot_timeout: 1h: a slot no relay streams from for 1h (relays stopped that long, or RELAY_CDC=off) is invalidated at the next checkpoint; "+
			"the relay then makes a new slot and the sweeper delivers what the old one had not announced: nothing is lost but the slot's position")
}
