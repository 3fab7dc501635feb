package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func runCmd(t *testing.T, ctx context.Context, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb relaytest.Buffer
	code = run(ctx, args, env, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"no database", nil, nil, "RELAY_DATABASE_URL: is required"},
		{"bad runner", []string{"RELAY_DATABASE_URL=postgres://localhost/x", "RELAY_RUNNER_URL=not a url"}, nil, "RELAY_RUNNER_URL"},
		{"bad duration", []string{"RELAY_DATABASE_URL=postgres://localhost/x", "RELAY_RUNNER_URL=http://h/", "RELAY_HTTP_TIMEOUT=fast"}, nil, "RELAY_HTTP_TIMEOUT"},
		{"unknown command", nil, []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"bad flag", []string{"RELAY_DATABASE_URL=postgres://localhost/x"}, []string{"migrate", "--bogus"}, "flag provided but not defined"},
		{"bad table for migrate", []string{"RELAY_DATABASE_URL=postgres://localhost/x", "RELAY_OUTBOX_TABLE=a;b"}, []string{"migrate"}, "RELAY_OUTBOX_TABLE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCmd(t, context.Background(), tc.env, tc.args...)
			if code != exitUsage {
				t.Errorf("exit %d, want 2", code)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q does not name %q", stderr, tc.want)
			}
			if lines := strings.Count(strings.TrimSpace(stderr), "\n"); tc.name != "bad flag" && lines != 0 {
				t.Errorf("stderr is %d lines, want one: %q", lines+1, stderr)
			}
		})
	}
}

// The build sets the version with -X main.version=…, which only works on a
// string variable: the assignment stops compiling if it becomes anything
// else.
func TestVersionIsSetByTheBuild(t *testing.T) {
	var _ *string = &version
	code, out, _ := runCmd(t, context.Background(), nil, "version")
	if code != 0 || out != "outbox-relay "+version+"\n" {
		t.Errorf("version: exit %d, %q", code, out)
	}
}

func TestHelpListsEveryVariable(t *testing.T) {
	code, out, _ := runCmd(t, context.Background(), nil, "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, v := range []string{"RELAY_DATABASE_URL", "RELAY_RUNNER_URL", "RELAY_RUNNER_SECRET", "RELAY_RUNNER_TOKEN",
		"RELAY_OUTBOX_TABLE", "RELAY_SLOT_NAME", "RELAY_PUBLICATION", "RELAY_CDC", "RELAY_SWEEP_INTERVAL",
		"RELAY_BACKOFF_BASE", "RELAY_BACKOFF_MAX", "RELAY_BACKOFF_JITTER", "RELAY_MAX_ATTEMPTS", "RELAY_HTTP_TIMEOUT",
		"RELAY_CONCURRENCY", "RELAY_BATCH_SIZE", "RELAY_LISTEN_ADDR", "RELAY_LOG_LEVEL", "RELAY_LOG_FORMAT"} {
		if !strings.Contains(out, v) {
			t.Errorf("--help does not list %s", v)
		}
	}
	if !strings.Contains(out, "public.portal_event_outbox") || !strings.Contains(out, "10m") {
		t.Error("--help does not show defaults")
	}
}

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
	url := pgtest.NewDB(t)
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), `CREATE TABLE portal_event_outbox (
		id bigserial PRIMARY KEY, event_id uuid, event_type varchar(100), payload bytea,
		status text, attempts int, next_attempt_at timestamptz NOT NULL, created_at timestamptz, delivered_at timestamptz)`); err != nil {
		t.Fatal(err)
	}
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

// A Django-made table has no database defaults; the relay takes it as it is.
func TestRunsOnATableWithoutDefaults(t *testing.T) {
	url := pgtest.NewDB(t)
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), `CREATE TABLE portal_event_outbox (
		id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, event_id uuid NOT NULL UNIQUE,
		event_type varchar(100) NOT NULL, payload jsonb NOT NULL, status varchar(16) NOT NULL,
		attempts integer NOT NULL, next_attempt_at timestamptz NOT NULL, last_error text NULL,
		created_at timestamptz NOT NULL, delivered_at timestamptz NULL);
		INSERT INTO portal_event_outbox (event_id, event_type, payload, status, attempts, next_attempt_at, created_at)
		VALUES (gen_random_uuid(), 'file.finalized', '{"django": true}', 'pending', 0, now(), now())`); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	rn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- r.Header.Get("Idempotency-Key"):
		default:
		}
	}))
	defer rn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		code, _, _ := runCmd(t, ctx, []string{"RELAY_DATABASE_URL=" + url, "RELAY_RUNNER_URL=" + rn.URL,
			"RELAY_CDC=off", "RELAY_LISTEN_ADDR=off"})
		done <- code
	}()
	select {
	case <-got:
	case <-time.After(30 * time.Second):
		t.Error("the row was not delivered")
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("exit %d after cancel, want 0", code)
	}
}

// Neither the database password, the signing secret nor the token may
// appear in the logs, even at debug level and with every request failing.
func TestSecretsStayOutOfLogs(t *testing.T) {
	c := pgtest.Shared()
	if c == nil {
		t.Skip("needs the harness's own cluster to know its password")
	}
	url := pgtest.NewDB(t)
	const secret = "whsec_c2VjcmV0LXNpZ25pbmcta2V5LTEyMzQ1Njc4OQ=="
	const token = "tok-very-secret-42"
	rn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "nope "+r.Header.Get("Authorization"), http.StatusInternalServerError)
	}))
	defer rn.Close()
	if code, _, stderr := runCmd(t, context.Background(), []string{"RELAY_DATABASE_URL=" + url}, "migrate"); code != 0 {
		t.Fatal(stderr)
	}
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), `INSERT INTO portal_event_outbox (event_type) VALUES ('a'), ('b')`); err != nil {
		t.Fatal(err)
	}
	env := []string{"RELAY_DATABASE_URL=" + url, "RELAY_RUNNER_URL=" + rn.URL, "RELAY_RUNNER_SECRET=" + secret,
		"RELAY_RUNNER_TOKEN=" + token, "RELAY_LOG_LEVEL=debug", "RELAY_CDC=off", "RELAY_LISTEN_ADDR=off",
		"RELAY_BACKOFF_BASE=10ms", "RELAY_BACKOFF_MAX=20ms", "RELAY_MAX_ATTEMPTS=3", "RELAY_SWEEP_INTERVAL=50ms"}

	ctx, cancel := context.WithCancel(context.Background())
	var logs relaytest.Buffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, nil, env, &logs, &logs) }()
	pgtest.WaitFor(t, 30*time.Second, "a row to reach dead", func() bool {
		return strings.Contains(logs.String(), "dead-lettered")
	})
	cancel()
	<-done
	// A wrong password and an unreachable database are logged too.
	bad := strings.Replace(url, c.Password(), "wrong-"+c.Password(), 1)
	code, _, stderr := runCmd(t, context.Background(), []string{"RELAY_DATABASE_URL=" + bad}, "migrate")
	if code == 0 {
		t.Error("migrate with a wrong password succeeded")
	}
	all := logs.String() + stderr
	for _, s := range []string{c.Password(), secret, strings.TrimPrefix(secret, "whsec_"), token} {
		if strings.Contains(all, s) {
			t.Errorf("logs contain the secret %q:\n%s", s, all)
		}
	}
}

// Every command refuses a connection string it cannot parse with exit 2,
// and no form of the string, a key=value password with spaces included,
// is ever printed.
func TestBadDatabaseURLExits2EverywhereWithoutThePassword(t *testing.T) {
	const pw = "pw-never-shown"
	for _, url := range []string{
		"host=127.0.0.1 port=notaport password = " + pw,
		"postgres://u:" + pw + "@127.0.0.1:99999999/db",
		"host=127.0.0.1 port=1 password = '" + pw + "' sslmode=bogus",
	} {
		for _, args := range [][]string{nil, {"migrate"}, {"status"}, {"requeue", "--all"}, {"check"}} {
			env := []string{"RELAY_DATABASE_URL=" + url, "RELAY_RUNNER_URL=http://127.0.0.1:1/"}
			code, out, stderr := runCmd(t, context.Background(), env, args...)
			if code != exitUsage || !strings.Contains(stderr, "RELAY_DATABASE_URL") {
				t.Errorf("%v with %q: exit %d, stderr %q; want 2 naming RELAY_DATABASE_URL", args, url, code, stderr)
			}
			if strings.Contains(out+stderr, pw) {
				t.Errorf("%v printed the password: %q", args, out+stderr)
			}
		}
	}
	// A parsable string with a wrong password, written with spaces.
	url := "host=127.0.0.1 port=1 user=nobody password = " + pw + " connect_timeout=2"
	for _, args := range [][]string{nil, {"migrate"}, {"status"}, {"check"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, out, stderr := runCmd(t, ctx, []string{"RELAY_DATABASE_URL=" + url, "RELAY_RUNNER_URL=http://127.0.0.1:1/", "RELAY_LISTEN_ADDR=off"}, args...)
		cancel()
		if strings.Contains(out+stderr, pw) {
			t.Errorf("%v printed the password: %q", args, out+stderr)
		}
	}
}

// SIGTERM (a cancelled context) while run waits for the database at
// start-up is a clean stop: exit 0.
func TestStopWhileWaitingForTheDatabaseExits0(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var logs relaytest.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, nil, []string{"RELAY_DATABASE_URL=postgres://u:p@127.0.0.1:1/db?connect_timeout=1",
			"RELAY_RUNNER_URL=http://127.0.0.1:1/", "RELAY_LISTEN_ADDR=off"}, &logs, &logs)
	}()
	pgtest.WaitFor(t, 10*time.Second, "the relay to wait for the database", func() bool {
		return strings.Contains(logs.String(), "waiting for the database")
	})
	cancel()
	if code := <-done; code != exitOK {
		t.Errorf("exit %d, want 0; logs:\n%s", code, logs.String())
	}
}
