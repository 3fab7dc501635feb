package pgtest_test

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func connect(t *testing.T, dbURL string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatalf("connect %s: %v", dbURL, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func queryString(t *testing.T, conn *pgx.Conn, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var s string
	if err := conn.QueryRow(ctx, sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func TestNewDBGivesDistinctDatabases(t *testing.T) {
	t.Parallel()
	seen := make(chan string, 4)
	t.Run("group", func(t *testing.T) {
		for i := range 4 {
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				t.Parallel()
				conn := connect(t, pgtest.NewDB(t))
				if _, err := conn.Exec(context.Background(), "CREATE TABLE t (id int); INSERT INTO t VALUES (1)"); err != nil {
					t.Fatalf("use fresh database: %v", err)
				}
				seen <- queryString(t, conn, "SELECT current_database()")
			})
		}
	})
	close(seen)
	names := map[string]bool{}
	for name := range seen {
		if names[name] {
			t.Errorf("database %s handed out twice", name)
		}
		names[name] = true
	}
	if len(names) != 4 {
		t.Errorf("got %d databases, want 4", len(names))
	}
}

func TestSharedClusterIsLogical(t *testing.T) {
	t.Parallel()
	if pgtest.Shared() == nil {
		t.Skip("using RELAY_TEST_DATABASE_URL: its settings are not ours")
	}
	conn := connect(t, pgtest.NewDB(t))
	if got := queryString(t, conn, "SHOW wal_level"); got != "logical" {
		t.Errorf("wal_level = %q, want logical", got)
	}
}

func TestPasswordIsRequired(t *testing.T) {
	t.Parallel()
	c := pgtest.Shared()
	if c == nil {
		t.Skip("using RELAY_TEST_DATABASE_URL")
	}
	u, _ := url.Parse(c.URL("postgres"))
	u.User = url.UserPassword("postgres", "wrong")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, u.String())
	if err == nil {
		conn.Close(ctx)
		t.Fatal("connected with a wrong password; want scram-sha-256 to refuse it")
	}
}

// The CDC consumer opens a replication connection over TCP with the
// password; pg_hba.conf must allow it.
func TestReplicationConnection(t *testing.T) {
	t.Parallel()
	if pgtest.Shared() == nil {
		t.Skip("using RELAY_TEST_DATABASE_URL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, pgtest.NewDB(t)+"&replication=database")
	if err != nil {
		t.Fatalf("replication connection: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll(); err != nil {
		t.Fatalf("IDENTIFY_SYSTEM: %v", err)
	}
}

func TestWithWalLevelReplica(t *testing.T) {
	t.Parallel()
	c := pgtest.StartT(t, pgtest.WithWalLevel("replica"))
	conn := connect(t, c.URL("postgres"))
	if got := queryString(t, conn, "SHOW wal_level"); got != "replica" {
		t.Errorf("wal_level = %q, want replica", got)
	}
}

func TestRestartImmediate(t *testing.T) {
	t.Parallel()
	c := pgtest.StartT(t)
	before := connect(t, c.URL("postgres"))
	if err := c.Restart("immediate"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := before.Ping(ctx); err == nil {
		t.Error("a connection from before the crash still works; want it cut")
	}
	after := connect(t, c.URL("postgres"))
	if got := queryString(t, after, "SELECT 'up'"); got != "up" {
		t.Errorf("after restart got %q", got)
	}
}

func TestStopAndStartServer(t *testing.T) {
	t.Parallel()
	c := pgtest.StartT(t)
	conn := connect(t, c.URL("postgres"))
	if _, err := conn.Exec(context.Background(), "CREATE TABLE kept (id int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	if err := c.StopServer("fast"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if down, err := pgx.Connect(ctx, c.URL("postgres")); err == nil {
		down.Close(ctx)
		t.Fatal("connected to a stopped server")
	}
	if err := c.StartServer(); err != nil {
		t.Fatal(err)
	}
	if got := queryString(t, connect(t, c.URL("postgres")), "SELECT id::text FROM kept"); got != "42" {
		t.Errorf("data after restart = %q, want 42", got)
	}
}

// A test's database goes with its replication slots, also one a walsender
// still streams from (a relay the test killed that has not noticed yet).
func TestNewDBDropsItsSlots(t *testing.T) {
	t.Parallel()
	tt := t
	var dbName string
	u, err := url.Parse(pgtest.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/postgres"
	t.Run("use", func(t *testing.T) {
		dbURL := pgtest.NewDB(t)
		conn := connect(t, dbURL)
		ctx := context.Background()
		dbName = queryString(t, conn, "SELECT current_database()")
		for _, slot := range []string{dbName + "_idle", dbName + "_held"} {
			if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
				t.Fatal(err)
			}
		}
		cfg, err := pgconn.ParseConfig(dbURL)
		if err != nil {
			t.Fatal(err)
		}
		cfg.RuntimeParams["replication"] = "database"
		rc, err := pgconn.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		// Closed after the database is dropped, so dropping meets it active.
		tt.Cleanup(func() { _ = rc.Close(context.Background()) })
		err = pglogrepl.StartReplication(ctx, rc, dbName+"_held", 0, pglogrepl.StartReplicationOptions{
			PluginArgs: []string{"proto_version '1'", "publication_names 'none'"},
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	conn := connect(t, u.String())
	if n := queryString(t, conn, fmt.Sprintf(`SELECT count(*)::text FROM pg_replication_slots WHERE slot_name LIKE '%s%%'`, dbName)); n != "0" {
		t.Errorf("%s slots of the dropped database %s are left", n, dbName)
	}
}

// A synchronous pair: a commit on the primary is on the standby once it
// returns, the two-host URL reaches the primary, and after the primary
// crashes and the standby is promoted it reaches the new primary, which
// has the row.
func TestPairPromote(t *testing.T) {
	p := pgtest.StartPair(t, true)
	ctx := context.Background()
	conn := connect(t, p.URL("postgres"))
	if _, err := conn.Exec(ctx, `CREATE TABLE t (id int); INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	if got := queryString(t, conn, `SELECT current_setting('port')`); got != fmt.Sprint(p.Primary.Port()) {
		t.Errorf("the two-host URL reached port %s, want the primary's %d", got, p.Primary.Port())
	}
	if err := p.Primary.StopServer("immediate"); err != nil {
		t.Fatal(err)
	}
	if err := p.Promote(); err != nil {
		t.Fatal(err)
	}
	after := connect(t, p.URL("postgres"))
	if got := queryString(t, after, `SELECT current_setting('port')`); got != fmt.Sprint(p.Standby.Port()) {
		t.Errorf("after the promotion the two-host URL reached port %s, want the standby's %d", got, p.Standby.Port())
	}
	if got := queryString(t, after, `SELECT count(*)::text FROM t`); got != "1" {
		t.Errorf("the promoted standby has %s rows of the synchronously committed 1", got)
	}
	if got := queryString(t, after, `SELECT pg_is_in_recovery()::text`); got != "false" {
		t.Errorf("pg_is_in_recovery() = %s after Promote", got)
	}
}

// An asynchronous pair streams too, with sync_state async.
func TestPairAsync(t *testing.T) {
	p := pgtest.StartPair(t, false)
	conn := connect(t, p.Primary.URL("postgres"))
	if got := queryString(t, conn, `SELECT sync_state FROM pg_stat_replication`); got != "async" {
		t.Errorf("sync_state %s, want async", got)
	}
}

// With WithSlotSync the standby keeps a copy of the primary's failover
// logical slot, persistent and marked synced, that stays after a
// promotion.
func TestPairSlotSync(t *testing.T) {
	pgtest.SkipBelow(t, 17, "standbys synchronize failover slots (sync_replication_slots) from 17 on")
	p := pgtest.StartPair(t, true, pgtest.WithSlotSync())
	primary := connect(t, p.Primary.URL("postgres"))
	if _, err := primary.Exec(context.Background(),
		`SELECT pg_create_logical_replication_slot('kept', 'pgoutput', false, false, true)`); err != nil {
		t.Fatal(err)
	}
	standby := connect(t, p.Standby.URL("postgres"))
	pgtest.WaitFor(t, time.Minute, "the standby to keep a synced, persistent copy of the slot", func() bool {
		var synced, temporary bool
		err := standby.QueryRow(context.Background(),
			`SELECT synced, temporary FROM pg_replication_slots WHERE slot_name = 'kept'`).Scan(&synced, &temporary)
		return err == nil && synced && !temporary
	})
	if err := p.Primary.StopServer("fast"); err != nil {
		t.Fatal(err)
	}
	if err := p.Promote(); err != nil {
		t.Fatal(err)
	}
	after := connect(t, p.Standby.URL("postgres"))
	if got := queryString(t, after, `SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = 'kept' AND slot_type = 'logical'`); got != "1" {
		t.Errorf("the promoted standby has %s copies of the failover slot, want 1", got)
	}
}
