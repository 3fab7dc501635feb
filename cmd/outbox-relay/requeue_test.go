package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

func TestRequeueMovesOnlyWhatWasAsked(t *testing.T) {
	t.Parallel()
	env, conn := migratedEnv(t)
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

// tries is how many requests the runner got for an event.
func (rn *adoptRunner) triesOf(key string) int {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	return rn.tries[key]
}

// requeue --status delivered sends delivered events again, with their own
// event ids, to a running relay: the dry run changes nothing, the limit
// takes the oldest first, the selectors choose, and a limit of 0 or
// another status is refused.
func TestReplayDelivered(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, conn := migrated(t)
	rn := newAdoptRunner(t)
	env := []string{"RELAY_DATABASE_URL=" + url}
	startRelay(t, append([]string{"RELAY_RUNNER_URL=" + rn.URL(), "RELAY_CDC=off", "RELAY_SWEEP_INTERVAL=20ms"}, env...))

	var ids []string // event ids, oldest first
	for _, typ := range []string{"file.finalized", "file.deleted", "user.created"} {
		var id string
		if err := conn.QueryRow(ctx, `INSERT INTO portal_event_outbox (event_type) VALUES ($1) RETURNING event_id::text`, typ).Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	sent := func(want ...int) {
		t.Helper()
		pgtest.WaitFor(t, 30*time.Second, "the runner to get every event as often as asked", func() bool {
			var delivered int
			err := conn.QueryRow(ctx, `SELECT count(*) FROM portal_event_outbox WHERE status = 'delivered'`).Scan(&delivered)
			for i, n := range want {
				if rn.triesOf(ids[i]) != n {
					return false
				}
			}
			return err == nil && delivered == len(ids)
		})
	}
	sent(1, 1, 1)

	for _, tt := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"--status", "delivered", "--type", "file.*", "--dry-run"}, 0, "2 delivered rows match; 2 would be requeued (--limit 1000)\n"},
		{[]string{"--status", "delivered"}, exitUsage, ""},
		{[]string{"--status", "delivered", "--all", "--limit", "0"}, exitUsage, ""},
		{[]string{"--status", "pending", "--all"}, exitUsage, ""},
	} {
		code, out, stderr := runCmd(t, ctx, env, append([]string{"requeue"}, tt.args...)...)
		if code != tt.code || out != tt.out {
			t.Errorf("requeue %v: exit %d %q %s; want exit %d %q", tt.args, code, out, stderr, tt.code, tt.out)
		}
	}
	var pending int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM portal_event_outbox WHERE status <> 'delivered'`).Scan(&pending); err != nil || pending != 0 {
		t.Errorf("%d rows not delivered after the dry run and the refusals, %v", pending, err)
	}

	code, out, stderr := runCmd(t, ctx, env, "requeue", "--status", "delivered", "--all", "--limit", "1")
	if code != 0 || out != "3 delivered rows match; 1 will be requeued (--limit 1)\nrequeued 1 delivered rows\n" {
		t.Errorf("requeue --all --limit 1: exit %d %q %s", code, out, stderr)
	}
	sent(2, 1, 1)
	code, out, stderr = runCmd(t, ctx, env, "requeue", "--status", "delivered", "--type", "user.*", "--since", "1h")
	if code != 0 || !strings.HasSuffix(out, "requeued 1 delivered rows\n") {
		t.Errorf("requeue --type --since: exit %d %q %s", code, out, stderr)
	}
	sent(2, 1, 2)
	var rowID string
	if err := conn.QueryRow(ctx, `SELECT id::text FROM portal_event_outbox WHERE event_id = $1::uuid`, ids[1]).Scan(&rowID); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = runCmd(t, ctx, env, "requeue", "--status", "delivered", "--id", rowID)
	if code != 0 || !strings.HasSuffix(out, "requeued 1 delivered rows\n") {
		t.Errorf("requeue --id: exit %d %q %s", code, out, stderr)
	}
	sent(2, 2, 2)
	// Sent again as if new: the first attempt of the same event.
	for _, id := range ids {
		if r, ok := rn.receipt(id); !ok || r.ID != id || r.Attempt != 1 {
			t.Errorf("event %s sent again as %+v", id, r)
		}
	}
}
