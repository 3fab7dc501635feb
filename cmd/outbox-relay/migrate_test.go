package main

import (
	"context"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

func TestMigrateIsIdempotent(t *testing.T) {
	env := []string{"RELAY_DATABASE_URL=" + pgtest.NewDB(t), "RELAY_OUTBOX_TABLE=app.outbox"}
	for i := range 2 {
		code, out, stderr := runCmd(t, context.Background(), env, "migrate")
		if code != 0 || !strings.Contains(out, "app.outbox is ready") {
			t.Fatalf("migrate #%d: exit %d, %q %q", i+1, code, out, stderr)
		}
	}
	code, out, _ := runCmd(t, context.Background(), env, "migrate", "--print")
	if code != 0 || !strings.Contains(out, `CREATE TABLE IF NOT EXISTS "app"."outbox"`) || !strings.Contains(out, `WHERE "status" = 'pending'`) {
		t.Errorf("migrate --print: exit %d\n%s", code, out)
	}
}

func TestMigrateNamesMissingColumns(t *testing.T) {
	url := prepared(t, `CREATE TABLE portal_event_outbox (
		id bigserial PRIMARY KEY, event_id uuid, event_type varchar(100), payload bytea,
		status text, attempts int, next_attempt_at timestamptz NOT NULL, created_at timestamptz, delivered_at timestamptz)`)
	code, _, stderr := runCmd(t, context.Background(), []string{"RELAY_DATABASE_URL=" + url}, "migrate")
	if code != exitFailure {
		t.Errorf("exit %d, want 1", code)
	}
	for _, want := range []string{`missing column "last_error" for role last_error`, `column "payload" (role payload) is bytea, want jsonb or json or text`} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr %q does not say %q", stderr, want)
		}
	}
}
