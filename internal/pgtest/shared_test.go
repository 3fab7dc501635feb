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

// wantString fails the test when sql's one value on conn is not want.
func wantString(t *testing.T, conn *pgx.Conn, sql, want string) {
	t.Helper()
	if got := queryString(t, conn, sql); got != want {
		t.Errorf("%s = %q, want %q", sql, got, want)
	}
}

// sharedCluster is the cluster the package's tests share; a test that
// needs the cluster itself, not only a database, skips when
// RELAY_TEST_DATABASE_URL stands in for it.
func sharedCluster(t *testing.T) *pgtest.Cluster {
	t.Helper()
	c := pgtest.Shared()
	if c == nil {
		t.Skip("using RELAY_TEST_DATABASE_URL: its settings are not ours")
	}
	return c
}

func TestNewDBGivesDistinctDatabases(t *testing.T) {
	t.Parallel()
	seen := make(chan string, 4)
	t.Run("group", func(t *testing.T) {
		for i := range 4 {
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				t.Parallel()
				conn := pgtest.Connect(t, pgtest.NewDB(t))
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
	sharedCluster(t)
	wantString(t, pgtest.Connect(t, pgtest.NewDB(t)), "SHOW wal_level", "logical")
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
		conn := pgtest.Connect(t, dbURL)
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
	conn := pgtest.Connect(t, u.String())
	if n := queryString(t, conn, fmt.Sprintf(`SELECT count(*)::text FROM pg_replication_slots WHERE slot_name LIKE '%s%%'`, dbName)); n != "0" {
		t.Errorf("%s slots of the dropped database %s are left", n, dbName)
	}
}
