// Package pgtest gives tests a real, throwaway PostgreSQL: a cluster made with
// initdb and pg_ctl in a temporary directory on a free port, or the server
// named by RELAY_TEST_DATABASE_URL. Tests run against a real server because a
// mock of pgx tests nothing about locks, constraints or replication.
//
// A package's tests share one server per test binary (Main) and get a fresh
// database each (NewDB); a test that must change server settings or restart
// the server starts its own cluster (StartT).
//
// cluster.go makes, starts and stops a cluster; postgresuser.go runs its
// binaries as the postgres user when the tests run as root; bindir.go
// finds those binaries; shared.go is the server one test binary shares,
// its databases and Main's leak check; pair.go is a primary with a
// standby, role.go the least-privilege roles, version.go the server's
// version.
package pgtest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// EnvDatabaseURL names the variable that points the tests at an existing
// server instead of a throwaway cluster, e.g. a CI service container.
const EnvDatabaseURL = "RELAY_TEST_DATABASE_URL"

// EnvBinDir names the variable that points the tests at the directory of
// the PostgreSQL server binaries to run, before any other place is looked
// at: make test-matrix runs the tests once per major version with it.
const EnvBinDir = "RELAY_TEST_PG_BINDIR"

// errNoPostgres marks a missing PostgreSQL installation, which Main and StartT
// turn into a skip outside CI.
var errNoPostgres = errors.New("PostgreSQL server binaries (initdb, pg_ctl) not found")

// WaitFor polls cond until it holds, failing the test with what once limit
// has passed: tests synchronise on conditions, never on sleeps.
func WaitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Connect opens a connection to url that the test's cleanup closes. The
// error leaves url out: it holds the password.
func Connect(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// ConnectReplication opens a replication connection to url's database
// (a WAL sender of its own), named app when app is not empty, that the
// test's cleanup closes. The error leaves url out: it holds the password.
func ConnectReplication(t testing.TB, url, app string) *pgconn.PgConn {
	t.Helper()
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		t.Fatal("pgtest: replication connection: the URL does not parse")
	}
	cfg.RuntimeParams["replication"] = "database"
	if app != "" {
		cfg.RuntimeParams["application_name"] = app
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("pgtest: replication connection: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) }) // a closed one errs
	return conn
}
