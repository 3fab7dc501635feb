package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/cdc"
	"github.com/outbox-relay/outbox-relay/internal/config"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// checkRunner is a runner that counts what it is asked; check must never
// POST to it.
type checkRunner struct {
	*httptest.Server
	mu      sync.Mutex
	methods []string
}

func newCheckRunner(t *testing.T) *checkRunner {
	r := &checkRunner{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.methods = append(r.methods, req.Method)
		r.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *checkRunner) URL() string { return r.Server.URL + "/hook" }

func (r *checkRunner) Methods() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.methods...)
}

// checkCluster is a server set up as production should be: wal_level
// logical and max_slot_wal_keep_size set. The shared one of pgtest has no
// cap, which check rightly warns about.
type checkCluster struct {
	*pgtest.Cluster
	major int // the server's major version
	seq   atomic.Int64
}

// startCheckCluster starts a cluster of the test's own with opts and
// max_slot_wal_keep_size bounded, as check wants it unless a test says
// otherwise.
func startCheckCluster(t *testing.T, opts ...pgtest.Option) *checkCluster {
	t.Helper()
	c := &checkCluster{Cluster: pgtest.StartT(t, append(opts, pgtest.WithSetting("max_slot_wal_keep_size", "1GB"))...)}
	var err error
	if c.major, err = pgtest.ServerMajor(); err != nil {
		t.Fatal(err)
	}
	return c
}

// newDB creates an empty database; the cluster is thrown away whole.
func (c *checkCluster) newDB(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("check_%d", c.seq.Add(1))
	adminExec(t, c.URL("postgres"), "CREATE DATABASE "+name)
	return c.URL(name)
}

// migratedDB is newDB after `outbox-relay migrate`.
func (c *checkCluster) migratedDB(t *testing.T) string {
	t.Helper()
	u := c.newDB(t)
	if code, _, stderr := runCmd(t, context.Background(), []string{"RELAY_DATABASE_URL=" + u}, "migrate"); code != 0 {
		t.Fatal(stderr)
	}
	return u
}

func adminExec(t *testing.T, url, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// asRole is url with the user and password of role.
func asRole(t *testing.T, dbURL, role, password string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(role, password)
	return u.String()
}

func checkEnv(dbURL, runner string, extra ...string) []string {
	return append([]string{"RELAY_DATABASE_URL=" + dbURL, "RELAY_RUNNER_URL=" + runner}, extra...)
}

// checkLine returns the line of out that starts with prefix, failing the
// test when there is none.
func checkLine(t *testing.T, out, prefix string) string {
	t.Helper()
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, prefix) {
			return strings.TrimSuffix(line, "\n")
		}
	}
	t.Fatalf("no line starts with %q in:\n%s", prefix, out)
	return ""
}

// wantCheck runs check and asserts its exit code and that the output has
// each line (a whole line, or a prefix ending in "…").
func wantCheck(t *testing.T, env []string, code int, lines ...string) string {
	t.Helper()
	got, out, stderr := runCmd(t, context.Background(), env, "check")
	if got != code {
		t.Errorf("check: exit %d, want %d\n%s%s", got, code, out, stderr)
	}
	for _, want := range lines {
		if prefix, ok := strings.CutSuffix(want, "…"); ok {
			checkLine(t, out, prefix)
		} else if line := checkLine(t, out, want); line != want {
			t.Errorf("line %q, want %q", line, want)
		}
	}
	return out
}

// catalog is what check must leave as it found it.
func catalog(t *testing.T, dbURL string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var s string
	err = conn.QueryRow(ctx, `SELECT format('relations %s: %s; publications: %s; slots: %s',
		(SELECT count(*) FROM pg_class),
		(SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relnamespace = 'public'::regnamespace),
		(SELECT string_agg(pubname || ':' || (SELECT count(*) FROM pg_publication_rel r WHERE r.prpubid = p.oid), ',' ORDER BY pubname) FROM pg_publication p),
		(SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots WHERE database = current_database()))`).Scan(&s)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// holdSlot creates slot on a replication connection named app and streams
// from it until the test ends, as a client other than this relay would.
func holdSlot(t *testing.T, dbURL, slot, app string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn := pgtest.ConnectReplication(t, dbURL, app)
	if _, err := pglogrepl.CreateReplicationSlot(ctx, conn, slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "NOEXPORT_SNAPSHOT"}); err != nil {
		t.Fatal(err)
	}
	if err := pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'outbox_relay'"}}); err != nil {
		t.Fatal(err)
	}
}

// closedPort is an address where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// failoverLine is check's failover line on a ready database of a server
// of that major version.
func failoverLine(major int) string {
	if major < 17 {
		return fmt.Sprintf("- failover: PostgreSQL %d keeps no slot across a failover (failover slots are 17+): …", major)
	}
	return "✓ failover: the relay makes outbox_relay a failover slot: a standby with sync_replication_slots = on, …"
}

func TestCheck(t *testing.T) {
	c := startCheckCluster(t)
	runner := newCheckRunner(t)

	t.Run("ready", func(t *testing.T) {
		t.Parallel()
		u := c.migratedDB(t)
		before := catalog(t, u)
		out := wantCheck(t, checkEnv(u, runner.URL(), "RELAY_CDC=on"), exitOK,
			"✓ server: PostgreSQL …",
			"✓ wal_level: logical",
			"✓ replication_slots: …",
			"✓ max_slot_wal_keep_size: 1GB (the cap on WAL a slot keeps while the relay is down)",
			"✓ role: postgres may replicate (REPLICATION or superuser)",
			"✓ replication_connection: accepted (IDENTIFY_SYSTEM)",
			"✓ privileges: postgres has SELECT, UPDATE, DELETE on public.portal_event_outbox",
			"✓ table: public.portal_event_outbox has the columns the relay uses",
			"✓ publication: outbox_relay publishes inserts, updates and deletes of public.portal_event_outbox",
			"✓ slot: outbox_relay does not exist; the relay creates it",
			failoverLine(c.major),
			"✓ runner: "+runner.URL()+" answered HEAD with 204 No Content in …",
			"ready: nothing blocks delivery or the fast path")
		if c.major >= 18 {
			checkLine(t, out, "✓ idle_replication_slot_timeout: 0: a slot is never invalidated for idling")
		}
		for line := range strings.Lines(out) {
			if strings.HasPrefix(line, "!") || strings.HasPrefix(line, "✗") || strings.HasPrefix(line, "?") || strings.Contains(line, "fix:") {
				t.Errorf("a ready database gives %q", line)
			}
		}
		if after := catalog(t, u); after != before {
			t.Errorf("check changed the catalog:\nbefore %s\nafter  %s", before, after)
		}

		code, out, _ := runCmd(t, context.Background(), checkEnv(u, runner.URL()), "check", "--json")
		var r checkReport
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("check --json: %v\n%s", err, out)
		}
		items := 12 // and idle_replication_slot_timeout from 18 on
		if c.major >= 18 {
			items++
		}
		if code != exitOK || r.ExitCode != exitOK || len(r.Items) != items {
			t.Errorf("check --json: exit %d, %d items, want %d: %+v", code, len(r.Items), items, r)
		}
		for _, it := range r.Items {
			if it.Status != checkOK && (it.Name != "failover" || c.major >= 17 || it.Status != checkSkip) {
				t.Errorf("check --json: %+v", it)
			}
		}
		for _, m := range runner.Methods() {
			if m != http.MethodHead {
				t.Errorf("the runner got a %s", m)
			}
		}
	})

	t.Run("never writes without --fix", func(t *testing.T) {
		t.Parallel()
		u := c.newDB(t)
		before := catalog(t, u)
		wantCheck(t, checkEnv(u, runner.URL(), "RELAY_CDC=on"), exitFailure,
			"- privileges: not checked: public.portal_event_outbox does not exist",
			"✗ table: public.portal_event_outbox does not exist",
			"    fix: outbox-relay migrate (or check --fix), or the application's migration",
			"✓ publication: outbox_relay does not exist yet; the relay creates it for public.portal_event_outbox (postgres may)",
			"blocked: 1 problem stops delivery or the fast path")
		if after := catalog(t, u); after != before {
			t.Errorf("check changed the catalog:\nbefore %s\nafter  %s", before, after)
		}

		code, out, stderr := runCmd(t, context.Background(), checkEnv(u, runner.URL(), "RELAY_CDC=on"), "check", "--fix")
		if code != exitOK {
			t.Errorf("check --fix: exit %d\n%s%s", code, out, stderr)
		}
		checkLine(t, out, "fix: migrated public.portal_event_outbox: table, indexes and publication outbox_relay exist")
		checkLine(t, out, "✓ table: public.portal_event_outbox has the columns the relay uses")
		after := catalog(t, u)
		if !strings.Contains(after, "portal_event_outbox") || !strings.Contains(after, "outbox_relay:1") {
			t.Errorf("check --fix made no table and publication: %s", after)
		}
	})

	t.Run("table missing a column", func(t *testing.T) {
		t.Parallel()
		u := c.migratedDB(t)
		adminExec(t, u, "ALTER TABLE portal_event_outbox DROP COLUMN last_error")
		// A table problem blocks whatever RELAY_CDC says.
		out := wantCheck(t, checkEnv(u, runner.URL(), "RELAY_CDC=off"), exitFailure,
			"- replication: not checked: RELAY_CDC=off, the relay delivers sweep-only",
			"✗ table: …",
			"    fix: each column above is named with its fix; or map the table's own columns with RELAY_COLUMNS and RELAY_STATUS_VALUES (docs/table.md: Adopting an existing outbox table)")
		if line := checkLine(t, out, "✗ table: "); !strings.Contains(line, "last_error") {
			t.Errorf("the table line does not name the column: %q", line)
		}
	})

	t.Run("role without REPLICATION", func(t *testing.T) {
		t.Parallel()
		u := c.migratedDB(t)
		adminExec(t, u, `CREATE ROLE check_norepl LOGIN PASSWORD 'pw-norepl';
			GRANT USAGE ON SCHEMA public TO check_norepl;
			GRANT SELECT, UPDATE, DELETE ON portal_event_outbox TO check_norepl`)
		ru := asRole(t, u, "check_norepl", "pw-norepl")
		wantCheck(t, checkEnv(ru, runner.URL(), "RELAY_CDC=on"), exitFailure,
			"✗ role: check_norepl has neither REPLICATION nor superuser",
			"    fix: ALTER ROLE \"check_norepl\" REPLICATION (as a superuser)",
			"- replication_connection: not tried: the role may not replicate",
			"✓ privileges: check_norepl has SELECT, UPDATE, DELETE on public.portal_event_outbox",
			"blocked: 1 problem stops delivery or the fast path")
		wantCheck(t, checkEnv(ru, runner.URL(), "RELAY_CDC=auto"), exitOK,
			"! role: check_norepl has neither REPLICATION nor superuser; with RELAY_CDC=auto the relay delivers sweep-only",
			"ready: nothing blocks delivery or the fast path (1 warning)")

		// Missing privileges block even sweep-only; DELETE only matters
		// with retention.
		adminExec(t, u, `REVOKE DELETE ON portal_event_outbox FROM check_norepl`)
		wantCheck(t, checkEnv(ru, runner.URL(), "RELAY_CDC=off"), exitFailure,
			"✗ privileges: check_norepl lacks DELETE on public.portal_event_outbox (DELETE: RELAY_RETENTION=168h0m0s deletes delivered rows; 0 keeps them)",
			`    fix: GRANT USAGE ON SCHEMA "public" TO "check_norepl"; GRANT SELECT, UPDATE, DELETE ON "public"."portal_event_outbox" TO "check_norepl" (see deploy/sql/least-privilege.sql)`)
		wantCheck(t, checkEnv(ru, runner.URL(), "RELAY_CDC=off", "RELAY_RETENTION=0"), exitOK,
			"✓ privileges: check_norepl has SELECT, UPDATE on public.portal_event_outbox")
	})

	t.Run("publication of another table", func(t *testing.T) {
		t.Parallel()
		u := c.migratedDB(t)
		adminExec(t, u, `CREATE TABLE other (id int PRIMARY KEY);
			DROP PUBLICATION outbox_relay; CREATE PUBLICATION outbox_relay FOR TABLE other`)
		// The superuser may add the outbox, as the relay would: a warning.
		wantCheck(t, checkEnv(u, runner.URL(), "RELAY_CDC=on"), exitOK,
			"! publication: outbox_relay publishes public.other but not public.portal_event_outbox; the relay will add public.portal_event_outbox to it",
			"    fix: set RELAY_PUBLICATION to a publication of the outbox alone (the relay creates it), unless sharing this one is meant")

		// A role that does not own the table may not.
		adminExec(t, u, `CREATE ROLE check_pubrepl LOGIN REPLICATION PASSWORD 'pw-pub';
			GRANT USAGE ON SCHEMA public TO check_pubrepl;
			GRANT SELECT, UPDATE, DELETE ON portal_event_outbox TO check_pubrepl`)
		ru := asRole(t, u, "check_pubrepl", "pw-pub")
		wantCheck(t, checkEnv(ru, runner.URL(), "RELAY_CDC=on"), exitFailure,
			"✗ publication: outbox_relay publishes public.other but not public.portal_event_outbox, and check_pubrepl may not add it (it must own the table)",
			`    fix: ALTER PUBLICATION "outbox_relay" ADD TABLE "public"."portal_event_outbox" as the table's owner, or set RELAY_PUBLICATION to a publication of its own`)

		// Truncates are decoded for nothing.
		adminExec(t, u, `DROP PUBLICATION outbox_relay;
			CREATE PUBLICATION outbox_relay FOR TABLE portal_event_outbox`)
		wantCheck(t, checkEnv(u, runner.URL(), "RELAY_CDC=on"), exitOK,
			"! publication: outbox_relay publishes inserts, updates and deletes of public.portal_event_outbox, and truncates too: the relay does not use them, they are decoded for nothing",
			`    fix: ALTER PUBLICATION "outbox_relay" SET (publish = 'insert, update, delete')`)

		// Inserts only, with other tables: every row is claimed first.
		adminExec(t, u, `DROP PUBLICATION outbox_relay;
			CREATE PUBLICATION outbox_relay FOR TABLE portal_event_outbox, other WITH (publish = 'insert')`)
		wantCheck(t, checkEnv(u, runner.URL(), "RELAY_CDC=on"), exitOK,
			"! publication: outbox_relay publishes inserts into public.portal_event_outbox but not its updates and deletes, and serves other tables too: every row is claimed before it is sent")
	})

	t.Run("slot held by another session", func(t *testing.T) {
		t.Parallel()
		u := c.migratedDB(t)
		// Slots are the server's, not a database's: the other tests'
		// databases must not see these under the default name.
		holdSlot(t, u, "held_slot", "pg_recvlogical")
		out := wantCheck(t, checkEnv(u, runner.URL(), "RELAY_CDC=on", "RELAY_SLOT_NAME=held_slot"), exitFailure,
			"✗ slot: held_slot is held by pid …",
			"    fix: stop that client, or end it: SELECT pg_terminate_backend(…")
		line := checkLine(t, out, "✗ slot: ")
		if !strings.Contains(line, `application_name "pg_recvlogical", user postgres, client 127.0.0.1, which is not a relay`) {
			t.Errorf("the slot line does not name the holder: %q", line)
		}
		wantCheck(t, checkEnv(u, runner.URL(), "RELAY_CDC=auto", "RELAY_SLOT_NAME=held_slot"), exitOK, "! slot: held_slot is held by pid …")

		// Another relay holding it is what replicas do.
		holdSlot(t, u, "second_slot", cdc.ApplicationName)
		wantCheck(t, checkEnv(u, runner.URL(), "RELAY_CDC=on", "RELAY_SLOT_NAME=second_slot"), exitOK,
			"! slot: second_slot is in use by another relay (pid …")
	})

	t.Run("unreachable runner", func(t *testing.T) {
		t.Parallel()
		u := c.migratedDB(t)
		addr := closedPort(t)
		wantCheck(t, checkEnv(u, "http://"+addr+"/hook", "RELAY_CDC=off"), exitFailure,
			"✗ runner: http://"+addr+"/hook: dial tcp "+addr+": connect: connection refused",
			"    fix: start the runner, or correct RELAY_RUNNER_URL; until it answers, events wait in the table",
			"blocked: 1 problem stops delivery or the fast path")
		wantCheck(t, checkEnv(u, "http://runner.invalid/hook", "RELAY_CDC=off"), exitFailure,
			"✗ runner: http://runner.invalid/hook: host runner.invalid does not resolve: …")
		// A password in the URL is not shown.
		out := wantCheck(t, checkEnv(u, "http://user:s3cret@"+addr+"/hook", "RELAY_CDC=off"), exitFailure,
			"✗ runner: http://user:xxxxx@"+addr+"/hook: …")
		if strings.Contains(out, "s3cret") {
			t.Errorf("check shows the runner's password:\n%s", out)
		}
	})

	t.Run("cannot tell", func(t *testing.T) {
		t.Parallel()
		// An item that cannot be read is not a pass: exit 2, with the
		// report.
		u := c.migratedDB(t)
		adminExec(t, u, `CREATE ROLE check_noread LOGIN REPLICATION PASSWORD 'pw-noread';
			GRANT USAGE ON SCHEMA public TO check_noread;
			GRANT SELECT, UPDATE, DELETE ON portal_event_outbox TO check_noread;
			REVOKE SELECT ON pg_catalog.pg_publication FROM PUBLIC`)
		wantCheck(t, checkEnv(asRole(t, u, "check_noread", "pw-noread"), runner.URL(), "RELAY_CDC=on"), exitUsage,
			"? publication: cannot read publication outbox_relay: ERROR: permission denied for table pg_publication (SQLSTATE 42501)",
			"cannot tell: 1 item could not be read")

		code, out, stderr := runCmd(t, context.Background(), []string{"RELAY_DATABASE_URL=" + c.newDB(t)}, "check")
		if code != exitUsage || !strings.Contains(stderr, "RELAY_RUNNER_URL: is required") || out != "" {
			t.Errorf("check without a runner URL: exit %d, %q %q", code, out, stderr)
		}
		bad := "postgres://postgres:pw-bad@127.0.0.1:1/db?sslmode=disable" // nothing listens on port 1
		code, out, stderr = runCmd(t, context.Background(), checkEnv(bad, runner.URL()), "check", "--json")
		if code != exitUsage || out != "" || strings.Contains(stderr, "pw-bad") {
			t.Errorf("check without a database: exit %d, %q %q", code, out, stderr)
		}
	})
}

func TestCheckWalLevelReplica(t *testing.T) {
	c := startCheckCluster(t, pgtest.WithWalLevel("replica"))
	runner := newCheckRunner(t)
	u := c.newDB(t)
	if code, _, stderr := runCmd(t, context.Background(), []string{"RELAY_DATABASE_URL=" + u}, "migrate"); code != 0 {
		t.Fatal(stderr)
	}
	wantCheck(t, checkEnv(u, runner.URL(), "RELAY_CDC=on"), exitFailure,
		"✗ wal_level: replica; the fast path needs logical",
		"    fix: ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL",
		"blocked: 1 problem stops delivery or the fast path")
	wantCheck(t, checkEnv(u, runner.URL(), "RELAY_CDC=auto"), exitOK,
		"! wal_level: replica; the fast path needs logical; with RELAY_CDC=auto the relay delivers sweep-only",
		"ready: nothing blocks delivery or the fast path (1 warning)")
}

// The stream's check (what run does with RELAY_CDC=on, and what the
// stream asks again of a server that could not stream) and `outbox-relay
// check` judge one server state alike: the stream's check fails exactly
// when check fails a replication item, and says that item's line.
func TestCheckAgreesWithTheStream(t *testing.T) {
	runner := newCheckRunner(t)
	// agree runs both on one state; want is the item check fails, "" for
	// none.
	agree := func(t *testing.T, env []string, want string) {
		t.Helper()
		_, out, stderr := runCmd(t, context.Background(), append(env, "RELAY_CDC=on"), "check", "--json")
		var r checkReport
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("check --json: %v\n%s%s", err, out, stderr)
		}
		var failed *checkItem
		for i, it := range r.Items {
			if it.Status != checkFail && it.Status != checkUnknown {
				continue
			}
			if slices.Contains([]string{"server", "privileges", "table", "runner"}, it.Name) {
				t.Fatalf("check fails an item of delivery, not of the fast path: %+v", it)
			}
			if failed == nil {
				failed = &r.Items[i]
			}
		}
		switch {
		case want == "" && failed != nil:
			t.Fatalf("check fails %+v, want no failure", *failed)
		case want != "" && (failed == nil || failed.Name != want):
			t.Fatalf("check fails %+v, want a failing %s item", failed, want)
		}
		cfg, err := config.Load(env, config.NeedRunner)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err = cdc.Check(ctx, cdc.Config{DatabaseURL: cfg.DatabaseURL, Schema: cfg.Table.Schema, Table: cfg.Table.Name,
			Slot: cfg.SlotName, Publication: cfg.Publication})
		switch {
		case failed == nil && err != nil:
			t.Errorf("check finds nothing against the fast path; the stream's check: %v", err)
		case failed == nil:
		case err == nil:
			t.Errorf("check: %s: %s; the stream's check finds nothing", failed.Name, failed.Detail)
		case err.Error() != fmt.Sprintf("%s: %s (fix: %s)", failed.Name, failed.Detail, failed.Fix):
			t.Errorf("the stream's check says\n%q\ncheck says\n%q (fix %q)", err, failed.Name+": "+failed.Detail, failed.Fix)
		}
	}
	migrated := func(t *testing.T, c *checkCluster) string {
		u := c.newDB(t)
		if code, _, stderr := runCmd(t, context.Background(), []string{"RELAY_DATABASE_URL=" + u}, "migrate"); code != 0 {
			t.Fatal(stderr)
		}
		return u
	}

	t.Run("wal_level replica", func(t *testing.T) {
		c := startCheckCluster(t, pgtest.WithWalLevel("replica"))
		agree(t, checkEnv(migrated(t, c), runner.URL()), "wal_level")
	})

	t.Run("roles and slots", func(t *testing.T) {
		// Two slots in all: the states below use them up.
		c := startCheckCluster(t, pgtest.WithSetting("max_replication_slots", "2"))
		u := migrated(t, c)
		agree(t, checkEnv(u, runner.URL()), "")

		adminExec(t, u, `CREATE ROLE agree_norepl LOGIN PASSWORD 'pw-agree';
			GRANT USAGE ON SCHEMA public TO agree_norepl;
			GRANT SELECT, UPDATE, DELETE ON portal_event_outbox TO agree_norepl`)
		agree(t, checkEnv(asRole(t, u, "agree_norepl", "pw-agree"), runner.URL()), "role")

		holdSlot(t, u, "held_slot", "pg_recvlogical")
		agree(t, checkEnv(u, runner.URL(), "RELAY_SLOT_NAME=held_slot"), "slot")

		holdSlot(t, u, "relay_slot", cdc.ApplicationName)
		agree(t, checkEnv(u, runner.URL(), "RELAY_SLOT_NAME=relay_slot"), "")

		// Both slots are taken: none is left for the relay's own.
		agree(t, checkEnv(u, runner.URL()), "replication_slots")
	})
}

// check's lines on the settings of some versions only: a relay's slot
// that is not a failover slot and standbys without
// synchronized_standby_slots (17+), idle_replication_slot_timeout (18+);
// on older servers the failover line says a failover costs a new slot, and
// there is no idle timeout line.
func TestCheckVersionSettings(t *testing.T) {
	c := startCheckCluster(t)
	runner := newCheckRunner(t)
	u := c.migratedDB(t)
	env := checkEnv(u, runner.URL())
	admin := c.URL("postgres")

	if c.major < 17 {
		out := wantCheck(t, env, exitOK, failoverLine(c.major))
		if strings.Contains(out, "idle_replication_slot_timeout") {
			t.Errorf("PostgreSQL %d has no idle_replication_slot_timeout, but check speaks of it:\n%s", c.major, out)
		}
		return
	}

	// A slot made by hand (or by a relay on 16 before an upgrade).
	adminExec(t, u, `SELECT pg_create_logical_replication_slot('outbox_relay', 'pgoutput', false, false, false)`)
	wantCheck(t, env, exitOK,
		"! failover: outbox_relay is not a failover slot: a promoted standby has no copy of it, and the relay makes a new slot there (the sweeper covers the gap)",
		"    fix: with the relays stopped, SELECT pg_drop_replication_slot('outbox_relay'); the relay makes it again as a failover slot")
	adminExec(t, u, `SELECT pg_drop_replication_slot('outbox_relay')`)

	adminExec(t, admin, `SELECT pg_create_physical_replication_slot('standby_a')`)
	wantCheck(t, env, exitOK,
		"! failover: standbys stream through 1 physical slot but synchronized_standby_slots is empty: …",
		"    fix: ALTER SYSTEM SET synchronized_standby_slots = 'standby_a'; SELECT pg_reload_conf()")
	adminExec(t, admin, `ALTER SYSTEM SET synchronized_standby_slots = 'standby_a'`)
	adminExec(t, admin, `SELECT pg_reload_conf()`)
	wantCheck(t, env, exitOK, failoverLine(c.major))

	if c.major < 18 {
		if out := wantCheck(t, env, exitOK); strings.Contains(out, "idle_replication_slot_timeout") {
			t.Errorf("PostgreSQL %d has no idle_replication_slot_timeout, but check speaks of it:\n%s", c.major, out)
		}
		return
	}
	adminExec(t, admin, `ALTER SYSTEM SET idle_replication_slot_timeout = '1h'`)
	adminExec(t, admin, `SELECT pg_reload_conf()`)
	wantCheck(t, env, exitOK,
		"! idle_replication_slot_timeout: 1h: a slot no relay streams from for 1h (relays stopped that long, or RELAY_CDC=off) is invalidated at the next checkpoint; "+
			"the relay then makes a new slot and the sweeper delivers what the old one had not announced: nothing is lost but the slot's position")
}
