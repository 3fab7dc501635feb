// Package faults runs the real outbox-relay binary against a real
// PostgreSQL and a real HTTP runner, injects faults, and checks that no
// event is lost and none is sent twice outside the documented crash
// window. `make test` runs small counts; `make faults` (RELAY_FAULTS=full)
// runs the counts of docs/RELIABILITY.md.
package faults

import (
	"context"
	"fmt"
	"maps"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "outbox-relay-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Under -race (make test) the relay is race-built too: the faults then
	// also hunt data races in the real binary.
	binary, err = relaytest.Build(context.Background(), dir, relaytest.BuildOptions{Race: relaytest.Race})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer os.RemoveAll(dir)
	pgtest.Main(m)
}

// full is true under `make faults`: the counts docs/RELIABILITY.md reports, not the CI
// subset.
var full = os.Getenv("RELAY_FAULTS") == "full"

// scale picks the count for the current mode.
func scale(small, big int) int {
	if full {
		return big
	}
	return small
}

// db is a migrated outbox database.
type db struct {
	url  string
	pool *pgxpool.Pool
}

func newDB(t *testing.T, url string) *db {
	t.Helper()
	return newDBWith(t, url, store.DefaultSchema(relaytest.Table))
}

// fresh is a migrated database of the test's own and a runner, both gone
// when the test ends.
func fresh(t *testing.T) (*db, *relaytest.Runner) {
	t.Helper()
	return newDB(t, pgtest.NewDB(t)), relaytest.NewRunner(t)
}

// newDBWith is newDB with the table migrate makes for schema.
func newDBWith(t *testing.T, url string, schema *store.Schema) *db {
	t.Helper()
	return &db{url: url, pool: relaytest.MigrateAt(t, url, schema, "outbox_relay").Pool()}
}

func (d *db) count(t *testing.T, where string) int {
	t.Helper()
	var n int
	if err := d.pool.QueryRow(context.Background(), `SELECT count(*) FROM portal_event_outbox WHERE `+where).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// eventIDs is every event_id in the table.
func (d *db) eventIDs(t *testing.T) map[string]bool {
	t.Helper()
	rows, _ := d.pool.Query(context.Background(), `SELECT event_id::text FROM portal_event_outbox`)
	list, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	ids := make(map[string]bool, len(list))
	for _, id := range list {
		ids[id] = true
	}
	return ids
}

// restartRunner brings a stopped runner back at the same URL.
func restartRunner(t *testing.T, rn *relaytest.Runner) {
	t.Helper()
	if err := rn.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// relayEnv is the environment of a relay under test; extra overrides.
func relayEnv(d *db, rn *relaytest.Runner, extra ...string) []string {
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"RELAY_DATABASE_URL=" + d.url,
		"RELAY_RUNNER_URL=" + rn.URL(),
		"RELAY_LISTEN_ADDR=off",
		"RELAY_SWEEP_INTERVAL=1s",
		"RELAY_BACKOFF_BASE=100ms",
		"RELAY_BACKOFF_MAX=1s",
		"RELAY_HTTP_TIMEOUT=2s",
		"RELAY_STATS_INTERVAL=1s",
		"RELAY_SHUTDOWN_TIMEOUT=5s",
		"RELAY_LOG_LEVEL=info",
	}
	return append(env, extra...)
}

// startRelay starts the relay with env; the test's cleanup kills it, fails
// the test when the race detector fired in it, and shows its logs when the
// test failed.
func startRelay(t *testing.T, env []string) *relaytest.Process {
	t.Helper()
	p, err := relaytest.Start(relaytest.Command{Binary: binary, Env: env})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Kill()
		logs := p.Logs()
		if strings.Contains(logs, "WARNING: DATA RACE") {
			t.Errorf("the race detector fired in relay %d:\n%s", p.Pid(), logs)
		}
		if t.Failed() || os.Getenv("RELAY_FAULTS_LOGS") != "" {
			t.Logf("relay %d logs (tail):\n%s", p.Pid(), relaytest.LastLines(logs, 40))
		}
	})
	return p
}

// inserter writes single-row transactions from a few connections at
// about rate rows per second until stopped; errors (the database may be
// restarting) are retried, so every counted row is committed.
type inserter struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	n      int
	ids    map[string]bool // event_id of every insert whose commit returned
}

func startInserter(t *testing.T, d *db, rate, conns int) *inserter {
	return startKeyedInserter(t, d, rate, conns, 0)
}

// startKeyedInserter is startInserter with keys ordering keys per
// connection (none when 0), each written by its connection only: one
// key's rows never commit concurrently, as the ordering contract asks.
func startKeyedInserter(t *testing.T, d *db, rate, conns, keys int) *inserter {
	ctx, cancel := context.WithCancel(context.Background())
	in := &inserter{cancel: cancel, ids: map[string]bool{}}
	every := time.Second * time.Duration(conns) / time.Duration(rate)
	for c := range conns {
		in.wg.Go(func() {
			paced(ctx, every, func(i int) {
				var id string
				var err error
				if keys == 0 {
					err = d.pool.QueryRow(ctx, `INSERT INTO portal_event_outbox (event_type, payload) VALUES ('fault.test', jsonb_build_object('conn', $1::int, 'i', $2::int)) RETURNING event_id::text`, c, i).Scan(&id)
				} else {
					err = d.pool.QueryRow(ctx, `INSERT INTO portal_event_outbox (event_type, payload, entity) VALUES ('fault.test', jsonb_build_object('conn', $1::int, 'i', $2::int), $3) RETURNING event_id::text`,
						c, i, fmt.Sprintf("k%d-%d", c, i%keys)).Scan(&id)
				}
				if err == nil {
					in.mu.Lock()
					in.n++
					in.ids[id] = true
					in.mu.Unlock()
				}
			})
		})
	}
	t.Cleanup(in.stop)
	return in
}

// paced calls f(0), f(1), … once every interval until ctx ends.
func paced(ctx context.Context, every time.Duration, f func(i int)) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		f(i)
	}
}

func (in *inserter) stop() {
	in.cancel()
	in.wg.Wait()
}

func (in *inserter) count() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.n
}

// committed is the event_id of every row whose commit the inserter saw.
func (in *inserter) committed() map[string]bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return maps.Clone(in.ids)
}

// result is one row of docs/RELIABILITY.md.
type result struct {
	Events, Lost, Duplicates int
	// OrderViolations is set on an ordered outbox (mode.verify).
	OrderViolations *int
}

// verify waits until nothing is pending, then compares the table with
// what the runner accepted: every event delivered (none lost), and counts
// the extra sends.
func verify(t *testing.T, d *db, rn *relaytest.Runner, limit time.Duration) result {
	t.Helper()
	r, extra := compare(t, d, rn, limit)
	for _, id := range extra {
		t.Errorf("runner got an event that is not in the table: %q", id)
	}
	return r
}

// compare is verify without its judgement of events the runner got that
// the table does not hold (after an asynchronous failover those are the
// database's loss): it returns them.
func compare(t *testing.T, d *db, rn *relaytest.Runner, limit time.Duration) (r result, extra []string) {
	t.Helper()
	pgtest.WaitFor(t, limit, "every row to be delivered", func() bool { return d.count(t, "status <> 'delivered'") == 0 })
	ids := d.eventIDs(t)
	got := rn.Accepted()
	r = result{Events: len(ids)}
	for id := range ids {
		switch n := got[id]; {
		case n == 0:
			r.Lost++
		case n > 1:
			r.Duplicates += n - 1
			var attempts int
			var lastErr *string
			_ = d.pool.QueryRow(context.Background(), `SELECT attempts, last_error FROM portal_event_outbox WHERE event_id = $1`, id).Scan(&attempts, &lastErr)
			t.Logf("event %s sent %d times; attempts %d, last_error %v", id, n, attempts, lastErr)
		}
	}
	for id := range got {
		if !ids[id] {
			extra = append(extra, id)
		}
	}
	if r.Lost > 0 {
		t.Errorf("%d of %d events marked delivered but never accepted by the runner", r.Lost, r.Events)
	}
	t.Logf("events %d, lost %d, duplicates %d", r.Events, r.Lost, r.Duplicates)
	return r, extra
}
