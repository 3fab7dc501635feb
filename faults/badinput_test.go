package faults

import (
	"context"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

// runOnce runs the binary to completion with a deadline and returns its
// exit code and output.
func runOnce(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = env
	out, _ := cmd.CombinedOutput()
	return cmd.ProcessState.ExitCode(), string(out)
}

func TestMissingTable(t *testing.T) {
	url := pgtest.NewDB(t)
	code, out := runOnce(t, []string{"RELAY_DATABASE_URL=" + url, "RELAY_RUNNER_URL=http://127.0.0.1:1/", "RELAY_LISTEN_ADDR=off"})
	if code != 1 || !strings.Contains(out, "portal_event_outbox") || !strings.Contains(out, "does not exist") {
		t.Errorf("missing table: exit %d\n%s", code, out)
	}
}

func TestTableMissingAColumn(t *testing.T) {
	d := newDB(t, pgtest.NewDB(t))
	if _, err := d.pool.Exec(context.Background(), `ALTER TABLE portal_event_outbox DROP COLUMN last_error`); err != nil {
		t.Fatal(err)
	}
	code, out := runOnce(t, []string{"RELAY_DATABASE_URL=" + d.url, "RELAY_RUNNER_URL=http://127.0.0.1:1/", "RELAY_LISTEN_ADDR=off"})
	if code != 1 || !strings.Contains(out, `missing column "last_error"`) {
		t.Errorf("table without last_error: exit %d\n%s", code, out)
	}
}

// Odd rows and odd answers: each row gets its own outcome, none blocks
// the others.
func TestBadRowsDoNotBlockOthers(t *testing.T) {
	d, rn := fresh(t)
	huge := strings.Repeat("x", 10<<20)
	rn.SetAnswer(func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
		if r.ContentLength > 5<<20 {
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			return false
		}
		return true
	})
	ctx := context.Background()
	if _, err := d.pool.Exec(ctx, `INSERT INTO portal_event_outbox (event_type, payload) VALUES
		('big', jsonb_build_object('blob', $1::text)), ('', '{}'), ('normal', '{"a": 1}'), ('nullish', 'null')`, huge); err != nil {
		t.Fatal(err)
	}
	startRelay(t, relayEnv(d, rn))
	pgtest.WaitFor(t, 60*time.Second, "every row to settle", func() bool { return d.count(t, "status = 'pending'") == 0 })
	var status, lastErr string
	if err := d.pool.QueryRow(ctx, `SELECT status, coalesce(last_error, '') FROM portal_event_outbox WHERE event_type = 'big'`).Scan(&status, &lastErr); err != nil {
		t.Fatal(err)
	}
	if status != "dead" || !strings.Contains(lastErr, "413") {
		t.Errorf("10 MiB payload refused by the runner: %s %q, want dead with the reason", status, lastErr)
	}
	if n := d.count(t, "status = 'delivered'"); n != 3 {
		t.Errorf("%d rows delivered, want the other 3", n)
	}
}

// A runner that answers 200 with an endless body: the relay reads a
// bounded amount, records the delivery and goes on.
func TestHugeAnswerBody(t *testing.T) {
	d, rn := fresh(t)
	rn.SetAnswer(func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
		w.WriteHeader(200)
		chunk := []byte(strings.Repeat("garbage ", 8192))
		for i := 0; i < 2000; i++ { // 128 MiB unless the client hangs up
			if _, err := w.Write(chunk); err != nil {
				break
			}
		}
		return true
	})
	if _, err := d.pool.Exec(context.Background(), `INSERT INTO portal_event_outbox (event_type) SELECT 'x' FROM generate_series(1, 5)`); err != nil {
		t.Fatal(err)
	}
	startRelay(t, relayEnv(d, rn))
	pgtest.WaitFor(t, 60*time.Second, "delivery", func() bool { return d.count(t, "status = 'delivered'") == 5 })
}

// An unreachable or unresolvable runner host is a retry with the reason,
// never a crash.
func TestUnreachableRunner(t *testing.T) {
	for name, url := range map[string]string{
		"refused":      "http://127.0.0.1:1/events",
		"unresolvable": "http://no-such-host.invalid/events",
	} {
		t.Run(name, func(t *testing.T) {
			d := newDB(t, pgtest.NewDB(t))
			if _, err := d.pool.Exec(context.Background(), `INSERT INTO portal_event_outbox (event_type) VALUES ('x')`); err != nil {
				t.Fatal(err)
			}
			env := append(relayEnv(d, &relaytest.Runner{}), "RELAY_RUNNER_URL="+url)
			p := startRelay(t, env)
			pgtest.WaitFor(t, 30*time.Second, "a recorded failure", func() bool {
				return d.count(t, "attempts >= 1 AND last_error LIKE 'runner unreachable%'") == 1
			})
			if code := p.Stop(10 * time.Second); code != 0 {
				t.Errorf("exit %d after SIGTERM", code)
			}
		})
	}
}
