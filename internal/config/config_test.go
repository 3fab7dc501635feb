package config

import (
	"log/slog"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

var valid = []string{
	"RELAY_DATABASE_URL=postgres://relay:s3cret-pw@127.0.0.1:5432/app",
	"RELAY_RUNNER_URL=http://127.0.0.1:8000/hooks",
}

func TestDefaults(t *testing.T) {
	c, err := Load(valid, NeedRunner)
	if err != nil {
		t.Fatal(err)
	}
	if c.DB == nil || c.DB.ConnConfig.Password != "s3cret-pw" || c.Table.String() != "public.portal_event_outbox" ||
		c.Columns.String() != store.DefaultColumns().String() || c.Statuses != store.DefaultStatuses() ||
		c.SigningKey != nil || c.Level != slog.LevelInfo || c.OnDead != store.OnDeadSkip ||
		c.Tracing != (Tracing{ServiceName: "outbox-relay"}) {
		t.Errorf("parsed values: %+v", c.Parsed)
	}
	c.Parsed, c.otel = Parsed{}, nil
	want := Config{
		DatabaseURL: "postgres://relay:s3cret-pw@127.0.0.1:5432/app", RunnerURL: "http://127.0.0.1:8000/hooks",
		OutboxTable: "public.portal_event_outbox", SlotName: "outbox_relay", Publication: "outbox_relay", CDC: "auto",
		SweepInterval: 5 * time.Second, BackoffBase: time.Second, BackoffMax: 10 * time.Minute, BackoffJitter: 0.2,
		MaxAttempts: 25, HTTPTimeout: 10 * time.Second, Concurrency: 16, ProbeMax: 5 * time.Second, BatchSize: 100, ListenAddr: ":9898",
		LogLevel: "info", LogFormat: "json", ShutdownGrace: 30 * time.Second, SlotWarnBytes: 256 << 20,
		SlotMaxBytes: 2 << 30, Retention: 168 * time.Hour, StatsInterval: 15 * time.Second, OrderingOnDead: "skip",
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", c, want)
	}
}

// An empty variable counts as unset (caarlos0/env), so it takes the default.
func TestEmptyIsDefault(t *testing.T) {
	c, err := Load(append(append([]string{}, valid...), "RELAY_CDC=", "RELAY_OUTBOX_TABLE="), NeedRunner)
	if err != nil || c.CDC != "auto" || c.OutboxTable != "public.portal_event_outbox" {
		t.Errorf("got %q %q %v", c.CDC, c.OutboxTable, err)
	}
}

// Every variable's bad values: each must be refused with an error that
// names the variable, and never quotes a secret.
func TestBadValues(t *testing.T) {
	cases := []struct{ v, val string }{
		{"DATABASE_URL", ""},
		{"DATABASE_URL", "mysql://u:p@h/db"},
		{"DATABASE_URL", "just words"},
		{"DATABASE_URL", "postgres://u:p@h:badport/db\x7f"},
		{"RUNNER_URL", ""},
		{"RUNNER_URL", "not a url"},
		{"RUNNER_URL", "/relative/path"},
		{"RUNNER_URL", "ftp://host/x"},
		{"RUNNER_URL", "http://"},
		{"RUNNER_URL", "http:///path"},
		{"RUNNER_URL", "localhost:8000"},
		{"RUNNER_URL", "http://host:port/"},
		{"RUNNER_SECRET", "plainsecret"},
		{"RUNNER_SECRET", "whsec_!!!notbase64"},
		{"RUNNER_SECRET", "whsec_c2hvcnQ="},
		{"RUNNER_TOKEN", "abc\ndef"},
		{"RUNNER_TOKEN", "abc\tdef"},
		{"RUNNER_TOKEN", "abc\x00def"},
		{"DATABASE_URL", "host=h port=notaport password = s3cret-pw"},
		{"DATABASE_URL", "postgres://u:s3cret-pw@h:99999999/db"},
		{"COLUMNS", "id"},
		{"COLUMNS", "colour=hue"},
		{"COLUMNS", "id=a,id=b"},
		{"COLUMNS", "status=x,attempts=x"},
		{"STATUS_VALUES", "pending=A,delivered=A"},
		{"STATUS_VALUES", "waiting=W"},
		{"STATUS_VALUES", "pending"},
		{"STATUS_VALUES", "pending=a\x00b"}, // a statement ends at a NUL
		{"STATUS_VALUES", "dead=d\xe9faut"}, // Latin-1, not UTF-8
		{"COLUMNS", "status=\xe9tat"},
		{"ORDERING_ON_DEAD", "stop"},
		{"OUTBOX_TABLE", "a.b.c"},
		{"OUTBOX_TABLE", "outbox; drop table x"},
		{"OUTBOX_TABLE", "1table"},
		{"OUTBOX_TABLE", "public."},
		{"OUTBOX_TABLE", strings.Repeat("x", 64)},
		{"SLOT_NAME", "Has-Dash"},
		{"SLOT_NAME", "UPPER"},
		{"PUBLICATION", "a b"},
		{"CDC", "yes"},
		{"SWEEP_INTERVAL", "abc"},
		{"SWEEP_INTERVAL", "0s"},
		{"SWEEP_INTERVAL", "-1s"},
		{"SWEEP_INTERVAL", "5"},
		{"SWEEP_INTERVAL", "1ns"},
		{"HTTP_TIMEOUT", "100000h"}, // the lease would overflow
		{"BACKOFF_MAX", "1000000h"},
		{"SHUTDOWN_TIMEOUT", "9999h"},
		{"BACKOFF_BASE", "0"},
		{"BACKOFF_BASE", "20m"}, // greater than the max
		{"BACKOFF_MAX", "-1m"},
		{"BACKOFF_MAX", "1h1x"},
		{"BACKOFF_JITTER", "1.5"},
		{"BACKOFF_JITTER", "-0.1"},
		{"BACKOFF_JITTER", "NaN"},
		{"BACKOFF_JITTER", "lots"},
		{"MAX_ATTEMPTS", "0"},
		{"MAX_ATTEMPTS", "-3"},
		{"MAX_ATTEMPTS", "ten"},
		{"MAX_ATTEMPTS", "99999999999999999999"},
		{"HTTP_TIMEOUT", "0s"},
		{"HTTP_TIMEOUT", "soon"},
		{"CONCURRENCY", "0"},
		{"CONCURRENCY", "1.5"},
		{"CONCURRENCY", "100000"},
		{"BATCH_SIZE", "0"},
		{"BATCH_SIZE", "x"},
		{"LISTEN_ADDR", "9898"},
		{"LISTEN_ADDR", "localhost:http"},
		{"LISTEN_ADDR", ":99999"},
		{"LOG_LEVEL", "verbose"},
		{"LOG_FORMAT", "xml"},
		{"SHUTDOWN_TIMEOUT", "0s"},
		{"SLOT_WARN_BYTES", "0"},
		{"SLOT_WARN_BYTES", "1GB"},
		{"SLOT_MAX_BYTES", "1024"}, // below the warn threshold
		{"RETENTION", "-1h"},
		{"RETENTION", "a week"},
		{"STATS_INTERVAL", "0s"},
		{"RUNNER_PROBE_MAX", "0s"},
		{"RUNNER_PROBE_MAX", "1h"},
		{"RUNNER_PROBE_MAX", "often"},
	}
	seen := map[string]bool{}
	for _, tc := range cases {
		seen[tc.v] = true
		t.Run(tc.v+"="+tc.val, func(t *testing.T) {
			environ := append([]string{}, valid...)
			environ = append(environ, "RELAY_RUNNER_SECRET=", "RELAY_"+tc.v+"="+tc.val)
			_, err := Load(environ, NeedRunner)
			if err == nil {
				t.Fatalf("RELAY_%s=%q accepted", tc.v, tc.val)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "RELAY_"+tc.v+": ") {
				t.Errorf("error does not start with the variable: %q", msg)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			for _, secret := range []string{"s3cret-pw", "!!!notbase64", "c2hvcnQ=", "abc\ndef", "abc\tdef"} {
				if strings.Contains(msg, secret) {
					t.Errorf("error quotes a secret: %q", msg)
				}
			}
		})
	}
	// The table above must cover every variable.
	for _, line := range strings.Split(strings.TrimSpace(Help()), "\n") {
		name := strings.TrimPrefix(strings.Fields(line)[0], Prefix)
		if !seen[name] {
			t.Errorf("no bad-value case for RELAY_%s", name)
		}
	}
}

func TestGoodValues(t *testing.T) {
	for _, kv := range []string{
		"RELAY_OUTBOX_TABLE=app.outbox",
		"RELAY_OUTBOX_TABLE=outbox",
		"RELAY_RUNNER_URL=https://runner.internal:8443/hook?x=1",
		"RELAY_RUNNER_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
		"RELAY_DATABASE_URL=host=localhost dbname=app",
		"RELAY_LISTEN_ADDR=off",
		"RELAY_LISTEN_ADDR=[::1]:9898",
		"RELAY_RETENTION=0",
		"RELAY_BACKOFF_JITTER=0",
		"RELAY_CDC=off",
		"RELAY_DATABASE_URL=host=localhost dbname=app password = 'with spaces'",
		"RELAY_COLUMNS=id=uuid,event_id=uuid,event_type=topic,payload=body,status=state,attempts=tries,next_attempt_at=available_at,last_error=error,created_at=created,delivered_at=sent_at",
		"RELAY_COLUMNS= id = Id , event_id=EventID",
		"RELAY_STATUS_VALUES=pending=NEW,delivered=SENT,dead=FAILED",
		"RELAY_STATUS_VALUES=pending=0,delivered=1,dead=2",
		"RELAY_PUBLICATION=PortalEvents",
		"RELAY_ORDERING_ON_DEAD=block",
		"RELAY_COLUMNS=ordering_key=entity_id",
	} {
		if _, err := Load(append(append([]string{}, valid...), kv), NeedRunner); err != nil {
			t.Errorf("%s refused: %v", kv, err)
		}
	}
}

// migrate, status and requeue need only the database and the table.
func TestValidateWithoutRunner(t *testing.T) {
	environ := []string{"RELAY_DATABASE_URL=postgres://localhost/app", "RELAY_CDC=bogus"}
	if _, err := Load(environ, NeedDatabase); err != nil {
		t.Errorf("Load(NeedDatabase) = %v, want nil", err)
	}
	if _, err := Load(environ, NeedRunner); err == nil {
		t.Error("Load(NeedRunner) accepted a missing runner URL")
	}
	// migrate --print needs no database at all.
	if _, err := Load([]string{"RELAY_COLUMNS=id=uuid,event_id=uuid"}, NeedTable); err != nil {
		t.Errorf("Load(NeedTable) = %v, want nil", err)
	}
}

func TestParseTable(t *testing.T) {
	for in, want := range map[string][2]string{
		"portal_event_outbox": {"public", "portal_event_outbox"},
		"app.Outbox_1":        {"app", "Outbox_1"},
	} {
		s, n, err := ParseTable(in)
		if err != nil || s != want[0] || n != want[1] {
			t.Errorf("ParseTable(%q) = %q, %q, %v", in, s, n, err)
		}
	}
}

func FuzzLoad(f *testing.F) {
	f.Add("SWEEP_INTERVAL", "5s")
	f.Add("BACKOFF_JITTER", "0.5")
	f.Add("RUNNER_URL", "http://[::1]:80/x")
	f.Add("OUTBOX_TABLE", "a.b")
	f.Add("DATABASE_URL", "postgres://u:p@h/d")
	f.Add("LISTEN_ADDR", "[::]:1")
	f.Fuzz(func(t *testing.T, name, value string) {
		environ := append(append([]string{}, valid...), "RELAY_"+name+"="+value)
		_, err := Load(environ, NeedRunner)
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("multi-line error %q", err)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret-pw") {
			t.Fatalf("error quotes the password: %q", err)
		}
	})
}

// The manual's table of variables is the one Reference makes from the
// tags: a setting added, renamed or given another default shows there.
func TestReferenceIsInTheManual(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	if want := Reference(); !strings.Contains(string(doc), want) {
		t.Errorf("docs/configuration.md does not hold the table of the config tags; replace its table with:\n%s", want)
	}
}
