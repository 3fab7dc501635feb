package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
)

func TestStatusExitCodes(t *testing.T) {
	t.Parallel()
	env, conn := migratedEnv(t, "RELAY_CDC=off")
	exec(t, conn, `INSERT INTO portal_event_outbox (event_type, status) VALUES ('a', 'delivered'), ('b', 'pending')`)

	code, out, stderr := runCmd(t, context.Background(), env, "status")
	if code != 0 || !strings.Contains(out, "healthy") || !strings.Contains(out, "pending     1") {
		t.Errorf("healthy status: exit %d\n%s%s", code, out, stderr)
	}
	if !strings.Contains(out, "max_slot_wal_keep_size") {
		t.Errorf("status does not report max_slot_wal_keep_size:\n%s", out)
	}

	exec(t, conn, `INSERT INTO portal_event_outbox (event_type, status) VALUES ('c', 'dead');
		UPDATE portal_event_outbox SET created_at = now() - interval '1 hour' WHERE event_type = 'b'`)
	code, out, _ = runCmd(t, context.Background(), env, "status", "--json")
	var r statusReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if code != exitFailure || r.Healthy || len(r.Problems) != 2 || r.Outbox.Dead != 1 || r.Outbox.Pending != 1 {
		t.Errorf("degraded status: exit %d, %+v", code, r)
	}

	// With the fast path expected (RELAY_CDC left out), a missing slot is a
	// problem too.
	code, out, _ = runCmd(t, context.Background(), []string{env[0], "RELAY_SLOT_NAME=nosuchslot"}, "status")
	if code != exitFailure || !strings.Contains(out, "slot nosuchslot does not exist") {
		t.Errorf("status without the slot: exit %d\n%s", code, out)
	}

	bad := "postgres://postgres:pw@127.0.0.1:1/db?sslmode=disable" // nothing listens on port 1
	if code, _, stderr := runCmd(t, context.Background(), []string{"RELAY_DATABASE_URL=" + bad}, "status"); code != exitUsage {
		t.Errorf("status without a database: exit %d, want 2 (%s)", code, stderr)
	}
}
