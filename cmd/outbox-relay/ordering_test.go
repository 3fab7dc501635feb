package main

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

// orderedRunner refuses the first attempt of a "flaky" event (503) and
// every attempt of a "poison" one (422), and accepts the rest.
func orderedRunner(t *testing.T) *relaytest.Runner {
	rn := relaytest.NewRunner(t)
	rn.SetAnswer(relaytest.AnswerBy(func(_ *http.Request, ev relaytest.Event) int {
		switch {
		case ev.Type == "poison":
			return http.StatusUnprocessableEntity
		case ev.Type == "flaky" && ev.Try == 1:
			return http.StatusServiceUnavailable
		}
		return http.StatusNoContent
	}))
	return rn
}

// orderedEnv migrates an outbox with the ordering key "entity" and returns
// the settings of a relay on it, by the stream or by the sweep alone.
func orderedEnv(t *testing.T, rn *relaytest.Runner, path string, extra ...string) ([]string, *pgx.Conn) {
	url := pgtest.NewDB(t)
	env := append([]string{"RELAY_DATABASE_URL=" + url, "RELAY_RUNNER_URL=" + rn.URL(), "RELAY_COLUMNS=ordering_key=entity",
		"RELAY_BACKOFF_JITTER=0", "RELAY_STATS_INTERVAL=100ms",
		"RELAY_SLOT_NAME=ordered_" + strings.ToLower(strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()[len("TestOrdered"):]))}, extra...)
	if path == "stream" {
		// The sweep an hour away: each key's next row must come from the
		// claim that follows its predecessor's outcome.
		env = append(env, "RELAY_CDC=on", "RELAY_SWEEP_INTERVAL=1h")
	} else {
		env = append(env, "RELAY_CDC=off", "RELAY_SWEEP_INTERVAL=50ms")
	}
	if code, out, stderr := runCmd(t, context.Background(), env, "migrate"); code != 0 {
		t.Fatalf("migrate: exit %d %s %s", code, out, stderr)
	}
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return env, conn
}

// insertKeyed writes one row per transaction, in order.
func insertKeyed(t *testing.T, conn *pgx.Conn, rows ...[2]string) {
	t.Helper()
	for _, r := range rows {
		if _, err := conn.Exec(context.Background(), `INSERT INTO portal_event_outbox (event_type, entity) VALUES ($1, nullif($2, ''))`, r[0], r[1]); err != nil {
			t.Fatal(err)
		}
	}
}

// tableRows are the rows in each key's order, for the order check.
func tableRows(t *testing.T, conn *pgx.Conn) []relaytest.KeyedRow {
	t.Helper()
	rows, err := relaytest.ReadKeyedRows(context.Background(), conn, "portal_event_outbox", "entity")
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

func countRows(t *testing.T, conn *pgx.Conn, where string) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM portal_event_outbox WHERE `+where).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Each key's rows arrive in order, by the stream and by the sweep; a
// retried head holds back its own key and no other, and rows without a
// key go at once.
func TestOrderedDelivery(t *testing.T) {
	for _, path := range []string{"stream", "sweep"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			rn := orderedRunner(t)
			// The flaky head's retry comes after 3 s: long enough to see
			// everything else go by.
			env, conn := orderedEnv(t, rn, path, "RELAY_BACKOFF_BASE=3s", "RELAY_BACKOFF_MAX=3s")
			relay := startRelay(t, env)
			if path == "stream" {
				pgtest.WaitFor(t, 30*time.Second, "the stream", func() bool {
					return strings.Contains(relay.logs.String(), "streaming inserts from the slot")
				})
			}
			insertKeyed(t, conn, [2]string{"flaky", "slow"}, [2]string{"e", "slow"}, [2]string{"e", "slow"})
			for range 5 {
				insertKeyed(t, conn, [2]string{"e", "a"}, [2]string{"e", "b"}, [2]string{"e", ""}, [2]string{"e", "c"})
			}
			pgtest.WaitFor(t, 30*time.Second, "every other key", func() bool {
				return countRows(t, conn, `status = 'delivered' AND entity IS DISTINCT FROM 'slow'`) == 20
			})
			// The slow key's head waits for its retry, and its rows behind it.
			if n := countRows(t, conn, `entity = 'slow' AND status = 'pending' AND attempts = 0`); n != 2 {
				t.Errorf("%d rows of the slow key untried while its head waits, want 2", n)
			}
			pgtest.WaitFor(t, 5*time.Second, "the blocked-keys gauge", func() bool {
				return relay.counter(t, "outbox_relay_ordering_blocked_keys") == 1
			})
			pgtest.WaitFor(t, 30*time.Second, "the slow key", func() bool { return countRows(t, conn, `status <> 'delivered'`) == 0 })
			if v := relaytest.OrderViolations(tableRows(t, conn), rn.FirstAcceptances()); len(v) > 0 {
				t.Errorf("order violations: %v", v)
			}
			if path == "stream" && relay.counter(t, `outbox_relay_deliveries_total{outcome="delivered",path="next"}`) == 0 {
				t.Error("no key's next row was claimed after its predecessor's outcome")
			}
		})
	}
}

// A poison head lets its key go on under skip; under block the key waits,
// status names it, and deleting the dead row frees it. Other keys never
// wait.
func TestOrderedPoisonHead(t *testing.T) {
	for _, policy := range []string{"skip", "block"} {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			rn := orderedRunner(t)
			env, conn := orderedEnv(t, rn, "sweep", "RELAY_ORDERING_ON_DEAD="+policy)
			startRelay(t, env)
			insertKeyed(t, conn, [2]string{"poison", "k"}, [2]string{"e", "k"}, [2]string{"e", "other"})
			pgtest.WaitFor(t, 30*time.Second, "the poison row and the other key", func() bool {
				return countRows(t, conn, `status = 'dead'`) == 1 && countRows(t, conn, `entity = 'other' AND status = 'delivered'`) == 1
			})
			if policy == "skip" {
				pgtest.WaitFor(t, 30*time.Second, "the poison row's successor", func() bool { return countRows(t, conn, `status = 'pending'`) == 0 })
				return
			}
			code, out, _ := runCmd(t, context.Background(), env, "status")
			if code != 1 || !strings.Contains(out, `keys blocked by a dead row (RELAY_ORDERING_ON_DEAD=block; requeue or delete the row): k`) ||
				!strings.Contains(out, `blocked keys 1`) || !strings.Contains(out, `runner answered 422 (permanent)`) {
				t.Errorf("status under block: exit %d\n%s", code, out)
			}
			if n := countRows(t, conn, `entity = 'k' AND status = 'pending' AND attempts = 0`); n != 1 {
				t.Errorf("%d rows behind the dead head untried, want 1", n)
			}
			if _, err := conn.Exec(context.Background(), `DELETE FROM portal_event_outbox WHERE status = 'dead'`); err != nil {
				t.Fatal(err)
			}
			pgtest.WaitFor(t, 30*time.Second, "the freed key", func() bool { return countRows(t, conn, `status = 'pending'`) == 0 })
		})
	}
}
