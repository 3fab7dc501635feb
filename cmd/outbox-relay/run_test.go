package main

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

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
