package pgtest_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

func TestPasswordIsRequired(t *testing.T) {
	t.Parallel()
	u, _ := url.Parse(sharedCluster(t).URL("postgres"))
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
	sharedCluster(t)
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
	wantString(t, pgtest.Connect(t, c.URL("postgres")), "SHOW wal_level", "replica")
}

func TestRestartImmediate(t *testing.T) {
	t.Parallel()
	c := pgtest.StartT(t)
	before := pgtest.Connect(t, c.URL("postgres"))
	if err := c.Restart("immediate"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := before.Ping(ctx); err == nil {
		t.Error("a connection from before the crash still works; want it cut")
	}
	wantString(t, pgtest.Connect(t, c.URL("postgres")), "SELECT 'up'", "up")
}

func TestStopAndStartServer(t *testing.T) {
	t.Parallel()
	c := pgtest.StartT(t)
	conn := pgtest.Connect(t, c.URL("postgres"))
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
	wantString(t, pgtest.Connect(t, c.URL("postgres")), "SELECT id::text FROM kept", "42")
}
