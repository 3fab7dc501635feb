package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"regexp"
	"strconv"
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

// adoptRunner is the runner for the adoption tests: it refuses the first
// attempt of an event whose data says flaky (503), and every attempt of a
// poison event (422), and remembers what it accepted and how many
// requests each event took.
type adoptRunner struct {
	*relaytest.Runner
	mu       sync.Mutex
	accepted map[string]adoptReceipt // by Idempotency-Key
	tries    map[string]int
}

type adoptReceipt struct {
	relaytest.Event
	At time.Time
}

func newAdoptRunner(t *testing.T) *adoptRunner {
	rn := &adoptRunner{Runner: relaytest.NewRunner(t), accepted: map[string]adoptReceipt{}, tries: map[string]int{}}
	rn.SetAnswer(relaytest.AnswerBy(func(r *http.Request, ev relaytest.Event) int {
		key := r.Header.Get("Idempotency-Key")
		rn.mu.Lock()
		defer rn.mu.Unlock()
		rn.tries[key] = ev.Try
		switch {
		case ev.Type == "poison":
			return http.StatusUnprocessableEntity
		case strings.Contains(string(ev.Data), `"flaky"`) && ev.Try == 1:
			return http.StatusServiceUnavailable
		}
		rn.accepted[key] = adoptReceipt{Event: ev, At: time.Now()}
		return http.StatusNoContent
	}))
	return rn
}

func (rn *adoptRunner) receipt(key string) (adoptReceipt, bool) {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	r, ok := rn.accepted[key]
	return r, ok
}

// relayUnderTest is `outbox-relay run` in this process, stopped at cleanup.
type relayUnderTest struct {
	logs    relaytest.Buffer
	metrics string // base URL of /metrics
	stop    func() int
}

var listenRE = regexp.MustCompile(`"addr":"([^"]+)"`)

func startRelay(t *testing.T, env []string) *relayUnderTest {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &relayUnderTest{}
	done := make(chan int, 1)
	go func() { done <- run(ctx, nil, append(env, "RELAY_LISTEN_ADDR=127.0.0.1:0"), &r.logs, &r.logs) }()
	var once sync.Once
	code := 0
	r.stop = func() int {
		once.Do(func() { cancel(); code = <-done })
		return code
	}
	t.Cleanup(func() {
		r.stop()
		if t.Failed() {
			t.Logf("relay logs:\n%s", r.logs.String())
		}
	})
	pgtest.WaitFor(t, 30*time.Second, "the relay to serve /metrics", func() bool {
		m := listenRE.FindStringSubmatch(r.logs.String())
		if m != nil {
			r.metrics = "http://" + m[1] + "/metrics"
		}
		return m != nil
	})
	return r
}

// counter reads one sample of /metrics, 0 when absent.
func (r *relayUnderTest) counter(t *testing.T, sample string) float64 {
	t.Helper()
	resp, err := http.Get(r.metrics)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// adoptedTable is a table in its owner's conventions and the settings that
// map it.
type adoptedTable struct {
	ddl    string
	insert string // one row: $1 event type, $2 payload (json text); returns the event id
	env    []string
	// stored is the table's view of an event: status, attempts,
	// last_error, whether delivered_at is set.
	query                          string
	pending, delivered, dead, none string // stored values; none is last_error when none
}

// Django's own conventions (USE_TZ = False): a UUID primary key that is
// the event id too, renamed columns, upper-case choices, timestamps
// without time zone, a PositiveSmallIntegerField and
// CharField(max_length=255, blank=True, default="") for the error: no
// database defaults at all, Django sets them in Python.
var djangoTable = adoptedTable{
	ddl: `CREATE TABLE portal_portaleventoutbox (
		"id" uuid NOT NULL PRIMARY KEY,
		"topic" varchar(100) NOT NULL,
		"body" jsonb NOT NULL,
		"state" varchar(16) NOT NULL,
		"tries" smallint NOT NULL CHECK ("tries" >= 0),
		"available_at" timestamp NOT NULL,
		"error" varchar(255) NOT NULL,
		"created" timestamp NOT NULL,
		"sent_at" timestamp NULL);
		CREATE INDEX portal_portaleventoutbox_state_idx ON portal_portaleventoutbox (state)`,
	insert: `INSERT INTO portal_portaleventoutbox (id, topic, body, state, tries, available_at, error, created)
		VALUES (gen_random_uuid(), $1, $2::jsonb, 'NEW', 0, localtimestamp, '', localtimestamp) RETURNING id::text`,
	env: []string{
		"RELAY_OUTBOX_TABLE=portal_portaleventoutbox",
		"RELAY_COLUMNS=id=id,event_id=id,event_type=topic,payload=body,status=state,attempts=tries,next_attempt_at=available_at,last_error=error,created_at=created,delivered_at=sent_at",
		"RELAY_STATUS_VALUES=pending=NEW,delivered=SENT,dead=FAILED",
	},
	query:   `SELECT state, tries, error, sent_at IS NOT NULL FROM portal_portaleventoutbox WHERE id = $1::uuid`,
	pending: "NEW", delivered: "SENT", dead: "FAILED", none: "",
}

// Integer status values (Django's IntegerChoices) on an otherwise default
// table.
var integerStatusTable = adoptedTable{
	ddl: `CREATE TABLE outbox (
		id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
		event_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
		event_type text NOT NULL, payload jsonb NOT NULL, status smallint NOT NULL DEFAULT 0,
		attempts integer NOT NULL DEFAULT 0, next_attempt_at timestamptz NOT NULL DEFAULT now(),
		last_error text, created_at timestamptz NOT NULL DEFAULT now(), delivered_at timestamptz)`,
	insert: `INSERT INTO outbox (event_type, payload) VALUES ($1, $2::jsonb) RETURNING event_id::text`,
	env:    []string{"RELAY_OUTBOX_TABLE=outbox", "RELAY_STATUS_VALUES=pending=0,delivered=1,dead=2"},
	query: `SELECT status::text, attempts, coalesce(last_error, '<null>'), delivered_at IS NOT NULL
		FROM outbox WHERE event_id = $1::uuid`,
	pending: "0", delivered: "1", dead: "2", none: "<null>",
}

// Two whole tables shaped like their owners', each through the stream and
// through the sweep, with a retry and a dead row: every event arrives with
// its own id, and the table says what the owner's code expects.
func TestAdoptedTables(t *testing.T) {
	for name, tbl := range map[string]adoptedTable{"django": djangoTable, "integer statuses": integerStatusTable} {
		for _, path := range []string{"stream", "sweep"} {
			t.Run(name+" via "+path, func(t *testing.T) {
				t.Parallel()
				exerciseAdopted(t, tbl, path)
			})
		}
	}
}

func exerciseAdopted(t *testing.T, tbl adoptedTable, path string) {
	ctx := context.Background()
	url := pgtest.NewDB(t)
	// The application's wall clock is not UTC: timestamps without time
	// zone must be read and written in the session's TimeZone, which the
	// application's sessions and the relay's share (a database setting).
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	_, err = admin.Exec(ctx, `ALTER DATABASE "`+admin.Config().Database+`" SET timezone = 'America/New_York'`)
	admin.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, tbl.ddl); err != nil {
		t.Fatal(err)
	}
	rn := newAdoptRunner(t)
	env := append([]string{"RELAY_DATABASE_URL=" + url, "RELAY_RUNNER_URL=" + rn.URL(),
		"RELAY_BACKOFF_BASE=10ms", "RELAY_BACKOFF_MAX=50ms", "RELAY_BACKOFF_JITTER=0",
		"RELAY_SLOT_NAME=adopt_" + strings.ToLower(strings.ReplaceAll(t.Name()[strings.LastIndex(t.Name(), "/")+1:], " ", "_"))}, tbl.env...)
	if path == "stream" {
		env = append(env, "RELAY_CDC=on", "RELAY_SWEEP_INTERVAL=1h")
	} else {
		env = append(env, "RELAY_CDC=off", "RELAY_SWEEP_INTERVAL=20ms")
	}
	if code, out, stderr := runCmd(t, ctx, env, "migrate"); code != 0 {
		t.Fatalf("migrate on the adopted table: exit %d %s %s", code, out, stderr)
	}
	relay := startRelay(t, env)
	if path == "stream" {
		pgtest.WaitFor(t, 30*time.Second, "the stream", func() bool {
			return strings.Contains(relay.logs.String(), "streaming inserts from the slot")
		})
	}
	events := map[string]string{} // event id -> type
	for _, e := range []struct{ typ, data string }{
		{"file.finalized", `{"file": 1}`}, {"file.finalized", `{"file": 2, "flaky": true}`}, {"poison", `{"file": 3}`},
	} {
		var id string
		if err := conn.QueryRow(ctx, tbl.insert, e.typ, e.data).Scan(&id); err != nil {
			t.Fatal(err)
		}
		events[id] = e.typ
	}
	for id, typ := range events {
		var status, lastErr string
		var attempts int
		var delivered bool
		pgtest.WaitFor(t, 30*time.Second, "event "+id+" to settle", func() bool {
			err := conn.QueryRow(ctx, tbl.query, id).Scan(&status, &attempts, &lastErr, &delivered)
			return err == nil && status != tbl.pending
		})
		if typ == "poison" {
			if status != tbl.dead || lastErr != "runner answered 422 (permanent)" || delivered || attempts != 1 {
				t.Errorf("poison %s: status %q attempts %d error %q delivered_at %v", id, status, attempts, lastErr, delivered)
			}
			continue
		}
		r, ok := rn.receipt(id)
		wantAttempts := 1
		if strings.Contains(string(r.Data), "flaky") {
			wantAttempts = 2
		}
		if !ok || status != tbl.delivered || lastErr != tbl.none || !delivered || attempts != wantAttempts || r.Attempt != wantAttempts {
			t.Errorf("%s: status %q attempts %d error %q delivered_at %v; runner got %+v", id, status, attempts, lastErr, delivered, r)
		}
		if r.ID != id || r.Type != typ {
			t.Errorf("runner got id %q type %q, want %q %q", r.ID, r.Type, id, typ)
		}
		if ts, err := time.Parse(time.RFC3339Nano, r.Timestamp); err != nil || time.Since(ts).Abs() > time.Minute {
			t.Errorf("timestamp %q is not the insert time (a time zone shift?): %v", r.Timestamp, err)
		}
	}
	// Retries are always the sweep's: the stream announces new rows only.
	want := map[string]float64{"delivered": 2, "retry": 1, "dead": 1}
	if path == "stream" {
		want["delivered"] = 1
	}
	for outcome, n := range want {
		if got := relay.counter(t, `outbox_relay_deliveries_total{outcome="`+outcome+`",path="`+path+`"}`); got != n {
			t.Errorf("%v attempts by the %s with outcome %s, want %v", got, path, outcome, n)
		}
	}
	if code := relay.stop(); code != 0 {
		t.Errorf("relay exit %d\n%s", code, relay.logs.String())
	}
}

// A publication named in mixed case streams: pgoutput folds unquoted names
// to lower case, so the relay must quote it. The row arrives by the stream
// (the sweep is an hour away) and the slot is made once.
func TestMixedCasePublicationStreams(t *testing.T) {
	t.Parallel()
	url, conn := migrated(t)
	rn := newAdoptRunner(t)
	env := []string{"RELAY_DATABASE_URL=" + url, "RELAY_RUNNER_URL=" + rn.URL(), "RELAY_PUBLICATION=PortalEvents",
		"RELAY_SLOT_NAME=mixed_case", "RELAY_CDC=on", "RELAY_SWEEP_INTERVAL=1h"}
	relay := startRelay(t, env)
	pgtest.WaitFor(t, 30*time.Second, "the stream", func() bool {
		return strings.Contains(relay.logs.String(), "streaming inserts from the slot")
	})
	var id string
	var committed time.Time
	if err := conn.QueryRow(context.Background(),
		`INSERT INTO portal_event_outbox (event_type) VALUES ('file.finalized') RETURNING event_id::text, clock_timestamp()`).
		Scan(&id, &committed); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, 10*time.Second, "the event", func() bool { _, ok := rn.receipt(id); return ok })
	r, _ := rn.receipt(id)
	t.Logf("commit to receipt: %s", r.At.Sub(committed))
	if n := relay.counter(t, `outbox_relay_deliveries_total{outcome="delivered",path="stream"}`); n != 1 {
		t.Errorf("%v deliveries by the stream, want 1", n)
	}
	if n := strings.Count(relay.logs.String(), "replication: slot created"); n != 1 {
		t.Errorf("slot created %d times, want once:\n%s", n, relay.logs.String())
	}
	var n int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_publication WHERE pubname = 'PortalEvents'`).Scan(&n); err != nil || n != 1 {
		t.Errorf("%d publications PortalEvents, %v", n, err)
	}
}

// orderedRunner refuses a "flaky" event (500: the row's own failure, so
// the breaker stays closed) until flaky is closed, and every attempt of a
// "poison" one (422), and accepts the rest.
func orderedRunner(t *testing.T, flaky <-chan struct{}) *relaytest.Runner {
	rn := relaytest.NewRunner(t)
	rn.SetAnswer(relaytest.AnswerBy(func(_ *http.Request, ev relaytest.Event) int {
		switch ev.Type {
		case "poison":
			return http.StatusUnprocessableEntity
		case "flaky":
			select {
			case <-flaky:
			default:
				return http.StatusInternalServerError
			}
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
			// The flaky head fails until every other key has gone by and
			// the gauge has shown its key blocked, however long that takes.
			flaky := make(chan struct{})
			rn := orderedRunner(t, flaky)
			env, conn := orderedEnv(t, rn, path, "RELAY_BACKOFF_BASE=200ms", "RELAY_BACKOFF_MAX=200ms", "RELAY_MAX_ATTEMPTS=1000")
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
			// The slow key's head keeps failing, and its rows wait behind it.
			if n := countRows(t, conn, `entity = 'slow' AND status = 'pending' AND attempts = 0`); n != 2 {
				t.Errorf("%d rows of the slow key untried while its head waits, want 2", n)
			}
			pgtest.WaitFor(t, 30*time.Second, "the blocked-keys gauge", func() bool {
				return relay.counter(t, "outbox_relay_ordering_blocked_keys") == 1
			})
			close(flaky)
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
			rn := orderedRunner(t, nil)
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
