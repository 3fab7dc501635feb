package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

// keyedRunner is a runner that counts, per ordering key (the payload's
// "key"), the requests it answers at once. hold, when not nil, decides
// whether a request waits until release is closed before its answer;
// flaky refuses the first attempt of one event in flaky (503), none when 0.
func keyedRunner(t *testing.T, load *relaytest.KeyLoad, hold func(eventType string) bool, release <-chan struct{}, flaky int) *relaytest.Runner {
	rn := relaytest.NewRunner(t)
	rn.SetAnswer(relaytest.AnswerBy(func(r *http.Request, ev relaytest.Event) int {
		var data struct{ Key string }
		_ = json.Unmarshal(ev.Data, &data)
		defer load.Enter(data.Key)()
		if hold != nil && hold(ev.Type) {
			select {
			case <-release:
			case <-r.Context().Done():
				return http.StatusServiceUnavailable
			}
		}
		if flaky > 0 && ev.Try == 1 && rand.IntN(flaky) == 0 {
			return http.StatusServiceUnavailable
		}
		return http.StatusNoContent
	}))
	return rn
}

// execer is a connection or an open transaction.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// insertEvent writes one row of key on q, its key also in the payload for
// the runner.
func insertEvent(t *testing.T, q execer, eventType, key string) {
	t.Helper()
	if _, err := q.Exec(context.Background(), `INSERT INTO portal_event_outbox (event_type, entity, payload)
		VALUES ($1, $2, jsonb_build_object('key', $2::text))`, eventType, key); err != nil {
		t.Fatal(err)
	}
}

// A row that commits late, earlier in its key's order than a row in flight
// (its transaction took its id first), waits for that row's outcome: the
// runner never has two rows of one key at once, and the key's rows arrive
// in commit order. Integer ids, the sweep alone.
func TestOrderedLateCommitNeverTwoInFlight(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var load relaytest.KeyLoad
	release := make(chan struct{})
	rn := keyedRunner(t, &load, func(typ string) bool { return typ == "held" }, release, 0)
	env, conn := orderedEnv(t, rn, "sweep")
	startRelay(t, env)
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) }) // before the relay stops

	app, err := pgx.Connect(ctx, strings.TrimPrefix(env[0], "RELAY_DATABASE_URL="))
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(ctx)
	tx, err := app.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	insertEvent(t, tx, "early", "k")
	insertEvent(t, conn, "held", "k")
	pgtest.WaitFor(t, 30*time.Second, "the held row at the runner", func() bool { return load.Now("k") == 1 })
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// The sweep that takes the marker sees the early row committed: had
	// that row been claimable, the same claim would have taken it.
	insertEvent(t, conn, "marker", "other")
	pgtest.WaitFor(t, 30*time.Second, "the marker", func() bool { return countRows(t, conn, `event_type = 'marker' AND status = 'delivered'`) == 1 })
	if countRows(t, conn, `event_type = 'early' AND attempts > 0`) > 0 {
		pgtest.WaitFor(t, 30*time.Second, "the early row at the runner", func() bool { return load.Overlapped()["k"] > 1 })
		t.Errorf("the early row was sent while the held row of its key was in flight: most at once per key %v", load.Overlapped())
	}
	once.Do(func() { close(release) })
	pgtest.WaitFor(t, 30*time.Second, "every row", func() bool { return countRows(t, conn, `status <> 'delivered'`) == 0 })
	if o := load.Overlapped(); len(o) > 0 {
		t.Errorf("keys with more than one request at once: %v", o)
	}
	var held, early string
	if err := conn.QueryRow(ctx, `SELECT (SELECT event_id::text FROM portal_event_outbox WHERE event_type = 'held'),
		(SELECT event_id::text FROM portal_event_outbox WHERE event_type = 'early')`).Scan(&held, &early); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, id := range rn.FirstAcceptances() {
		if id == held || id == early {
			got = append(got, id)
		}
	}
	if strings.Join(got, ",") != held+","+early {
		t.Errorf("key k accepted %v, want the held row %s, then the early row %s (commit order)", got, held, early)
	}
}

// With uuid ids a key's rows go in the order of the sequence column: many
// keys, written three rows per transaction from several connections (the
// writers of one key take turns, as the ordering contract asks), by the
// stream and by the sweep, with a runner that refuses some first attempts.
// Every key's rows arrive in the column's order, never two at once.
func TestOrderedUUIDsBySequence(t *testing.T) {
	const conns, txPerConn, keys = 4, 25, 30
	for _, path := range []string{"stream", "sweep"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			var load relaytest.KeyLoad
			rn := keyedRunner(t, &load, nil, nil, 8)
			env, conn := orderedEnv(t, rn, path, "RELAY_COLUMNS=id=event_id,ordering_key=entity,sequence=seq",
				"RELAY_BACKOFF_BASE=50ms", "RELAY_BACKOFF_MAX=200ms")
			relay := startRelay(t, env)
			if path == "stream" {
				pgtest.WaitFor(t, 30*time.Second, "the stream", func() bool {
					return strings.Contains(relay.logs.String(), "streaming inserts from the slot")
				})
			}
			pool, err := pgxpool.New(context.Background(), strings.TrimPrefix(env[0], "RELAY_DATABASE_URL="))
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Close()
			var wg sync.WaitGroup
			for c := range conns {
				wg.Go(func() {
					for i := range txPerConn {
						if err := insertThree(pool, fmt.Sprintf("k%d", (c*7+i*3)%keys)); err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			pgtest.WaitFor(t, 60*time.Second, "every row", func() bool { return countRows(t, conn, `status <> 'delivered'`) == 0 })
			rows, err := relaytest.ReadKeyedRowsBy(context.Background(), conn, "portal_event_outbox", "entity", "seq")
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) != conns*txPerConn*3 || len(rn.Accepted()) != len(rows) {
				t.Fatalf("%d rows, %d accepted, want %d", len(rows), len(rn.Accepted()), conns*txPerConn*3)
			}
			if v := relaytest.OrderViolations(rows, rn.FirstAcceptances()); len(v) > 0 {
				t.Errorf("%d order violations, first: %s", len(v), v[0])
			}
			if o := load.Overlapped(); len(o) > 0 {
				t.Errorf("keys with more than one request at once: %v", o)
			}
		})
	}
}

// insertThree writes three rows of key in one transaction, holding the
// key's lock as an application holds its entity's row lock.
func insertThree(pool *pgxpool.Pool, key string) error {
	ctx := context.Background()
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, key); err != nil {
			return err
		}
		for n := range 3 {
			if _, err := tx.Exec(ctx, `INSERT INTO portal_event_outbox (event_type, entity, payload)
				VALUES ('e', $1, jsonb_build_object('key', $1::text, 'n', $2::int))`, key, n); err != nil {
				return err
			}
		}
		return nil
	})
}

// An ordering key on a table with uuid ids and no sequence column stops
// run (exit 2) and check with one line naming the column to add and its
// mapping; done as the line says, both take the table.
func TestOrderedUUIDsWithoutASequence(t *testing.T) {
	t.Parallel()
	rn := keyedRunner(t, new(relaytest.KeyLoad), nil, nil, 0)
	env, conn := orderedEnv(t, rn, "sweep")
	env = append(env, "RELAY_COLUMNS=id=event_id,ordering_key=entity")
	// Bounded: a relay that took the table would run until stopped.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code, _, stderr := runCmd(t, ctx, append(env, "RELAY_LISTEN_ADDR=off"), "run")
	const want = `outbox-relay: outbox table public.portal_event_outbox: ordered delivery needs an order the table cannot give: ` +
		`its id "event_id" is uuid, not a number from a sequence; add a column that a sequence fills ` +
		`(ALTER TABLE "public"."portal_event_outbox" ADD COLUMN seq bigserial) and map it with sequence=seq in RELAY_COLUMNS`
	if code != exitUsage || strings.TrimSuffix(stderr, "\n") != want {
		t.Fatalf("run: exit %d, stderr %q\nwant exit 2 and %q", code, stderr, want)
	}
	wantCheck(t, env, exitFailure, "✗ table: "+strings.TrimPrefix(want, "outbox-relay: "))

	alter := regexp.MustCompile(`\((ALTER TABLE [^)]*)\)`).FindStringSubmatch(stderr)[1]
	if _, err := conn.Exec(context.Background(), alter); err != nil {
		t.Fatalf("%s: %v", alter, err)
	}
	env = append(env, "RELAY_COLUMNS=id=event_id,ordering_key=entity,sequence=seq")
	wantCheck(t, env, exitOK, "✓ table: public.portal_event_outbox has the columns the relay uses")
	relay := startRelay(t, env)
	pgtest.WaitFor(t, 10*time.Second, "the start-up line", func() bool {
		return strings.Contains(relay.logs.String(), `"ordered_by":"entity in order of seq (on dead: skip)"`)
	})
}
