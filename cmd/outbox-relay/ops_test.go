package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

func migrated(t *testing.T) (url string, conn *pgx.Conn) {
	t.Helper()
	url = pgtest.NewDB(t)
	if code, _, stderr := runCmd(t, context.Background(), []string{"RELAY_DATABASE_URL=" + url}, "migrate"); code != 0 {
		t.Fatal(stderr)
	}
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return url, conn
}

func exec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatal(err)
	}
}

func TestStatusExitCodes(t *testing.T) {
	t.Parallel()
	url, conn := migrated(t)
	env := []string{"RELAY_DATABASE_URL=" + url, "RELAY_CDC=off"}
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

	// With the fast path expected, a missing slot is a problem too.
	code, out, _ = runCmd(t, context.Background(), []string{"RELAY_DATABASE_URL=" + url, "RELAY_SLOT_NAME=nosuchslot"}, "status")
	if code != exitFailure || !strings.Contains(out, "slot nosuchslot does not exist") {
		t.Errorf("status without the slot: exit %d\n%s", code, out)
	}

	bad := "postgres://postgres:pw@127.0.0.1:1/db?sslmode=disable" // nothing listens on port 1
	if code, _, stderr := runCmd(t, context.Background(), []string{"RELAY_DATABASE_URL=" + bad}, "status"); code != exitUsage {
		t.Errorf("status without a database: exit %d, want 2 (%s)", code, stderr)
	}
}

func TestRequeueMovesOnlyWhatWasAsked(t *testing.T) {
	t.Parallel()
	url, conn := migrated(t)
	env := []string{"RELAY_DATABASE_URL=" + url}
	exec(t, conn, `INSERT INTO portal_event_outbox (id, event_type, status, attempts, last_error, created_at) VALUES
		(1, 'file.finalized', 'dead', 25, 'boom', now()),
		(2, 'file.deleted',   'dead', 3,  'boom', now()),
		(3, 'user.created',   'dead', 1,  'boom', now()),
		(4, 'file.old',       'dead', 1,  'boom', now() - interval '3 days'),
		(5, 'file.finalized', 'delivered', 1, NULL, now()),
		(6, 'file.finalized', 'pending', 2, 'boom', now())`)

	if code, _, stderr := runCmd(t, context.Background(), env, "requeue"); code != exitUsage || !strings.Contains(stderr, "--all") {
		t.Errorf("requeue without a filter: exit %d %s", code, stderr)
	}
	code, out, _ := runCmd(t, context.Background(), env, "requeue", "--type", "file.*", "--since", "24h", "--dry-run")
	if code != 0 || !strings.Contains(out, "2 dead rows match; 2 would be requeued\n") {
		t.Errorf("dry run: exit %d %q", code, out)
	}
	code, out, _ = runCmd(t, context.Background(), env, "requeue", "--type", "file.*", "--since", "24h")
	if code != 0 || !strings.Contains(out, "requeued 2") {
		t.Errorf("requeue: exit %d %q", code, out)
	}
	code, out, _ = runCmd(t, context.Background(), env, "requeue", "--id", "3,5,6")
	if code != 0 || !strings.Contains(out, "requeued 1") {
		t.Errorf("requeue by id: exit %d %q", code, out)
	}
	want := map[int]string{1: "pending/0", 2: "pending/0", 3: "pending/0", 4: "dead/1", 5: "delivered/1", 6: "pending/2"}
	rows, err := conn.Query(context.Background(), `SELECT id, status || '/' || attempts FROM portal_event_outbox`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int
		var s string
		if err := rows.Scan(&id, &s); err != nil {
			t.Fatal(err)
		}
		if want[id] != s {
			t.Errorf("row %d is %s, want %s", id, s, want[id])
		}
	}
}
