package deploy_test

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

const leastPrivilegeSQL = "sql/least-privilege.sql"

// findPsql returns the psql next to the cluster's server binaries, or the
// one on PATH.
func findPsql(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	if p := filepath.Join(c.BinDir(), "psql"); fileExists(p) {
		return p
	}
	p, err := exec.LookPath("psql")
	if err != nil {
		if os.Getenv("CI") == "" {
			t.Skip("psql not found; it comes with PostgreSQL's client package")
		}
		t.Fatal("psql not found")
	}
	return p
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// withUser is the cluster's URL for db, logged in as user.
func withUser(t *testing.T, c *pgtest.Cluster, db, user, password string) string {
	t.Helper()
	u, err := url.Parse(c.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(user, password)
	return u.String()
}

// runScript runs the least-privilege script with psql as the superuser.
func runScript(t *testing.T, psql, dbURL string, vars ...string) (string, error) {
	t.Helper()
	args := []string{"-X", "-q", "-d", dbURL, "-f", leastPrivilegeSQL}
	for _, v := range vars {
		args = append(args, "-v", v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, psql, args...).CombinedOutput()
	return string(out), err
}

// The role that deploy/sql/least-privilege.sql makes, on a real server,
// can do everything the relay does and nothing it should not: it runs the
// relay's own statements (claim, record, requeue, retention, stats, slot
// figures), streams inserts through a publication it does not own, and
// the slot guard can end its walsender and drop the slot without
// pg_signal_backend.
func TestLeastPrivilegeSQL(t *testing.T) {
	c := pgtest.StartT(t)
	psql := findPsql(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// The application owns its database and the outbox table, as a
	// Django project's role would; it is not a superuser.
	super, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer super.Close(context.Background())
	for _, q := range []string{
		`CREATE ROLE app LOGIN PASSWORD 'app-password'`,
		`CREATE DATABASE app OWNER app`,
	} {
		if _, err := super.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// The superuser again, in the application's database.
	admin, err := pgx.Connect(ctx, c.URL("app"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	appConn, err := pgx.Connect(ctx, withUser(t, c, "app", "app", "app-password"))
	if err != nil {
		t.Fatal(err)
	}
	defer appConn.Close(context.Background())
	table := store.Table{Schema: "public", Name: "portal_event_outbox"}
	// No publication yet: the script must create it.
	if pubErr, err := store.Migrate(ctx, appConn, store.DefaultSchema(table), ""); pubErr != nil || err != nil {
		t.Fatalf("migrate as the table owner: %v, %v", pubErr, err)
	}

	const password = "relay-password-for-the-test"
	for run := 1; run <= 2; run++ { // idempotent: a second run changes nothing
		if out, err := runScript(t, psql, c.URL("app"), "password="+password); err != nil {
			t.Fatalf("run %d of %s: %v\n%s", run, leastPrivilegeSQL, err, out)
		}
	}

	var isSuper, repl, createdb, createrole, bypassrls bool
	if err := super.QueryRow(ctx, `SELECT rolsuper, rolreplication, rolcreatedb, rolcreaterole, rolbypassrls
		FROM pg_roles WHERE rolname = 'outbox_relay'`).Scan(&isSuper, &repl, &createdb, &createrole, &bypassrls); err != nil {
		t.Fatal(err)
	}
	if isSuper || !repl || createdb || createrole || bypassrls {
		t.Errorf("outbox_relay: superuser %v replication %v createdb %v createrole %v bypassrls %v; want replication only",
			isSuper, repl, createdb, createrole, bypassrls)
	}
	var pubInsert, pubUpdate, pubDelete bool
	if err := appConn.QueryRow(ctx, `SELECT pubinsert, pubupdate, pubdelete FROM pg_publication p
		JOIN pg_publication_tables t USING (pubname)
		WHERE pubname = 'outbox_relay' AND schemaname = 'public' AND tablename = 'portal_event_outbox'`).
		Scan(&pubInsert, &pubUpdate, &pubDelete); err != nil {
		t.Fatalf("publication outbox_relay of the table: %v", err)
	}
	if !pubInsert || !pubUpdate || !pubDelete {
		t.Errorf("publication publishes insert %v update %v delete %v; want all three", pubInsert, pubUpdate, pubDelete)
	}

	relayURL := withUser(t, c, "app", "outbox_relay", password)
	pool, err := pgxpool.New(ctx, relayURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	// What the relay runs, as the relay runs it.
	if err := store.CheckSchema(ctx, pool, table); err != nil {
		t.Fatalf("start-up check as outbox_relay: %v", err)
	}
	insert := `INSERT INTO portal_event_outbox (event_type, payload) VALUES ('file.finalized', '{"n": 1}')`
	for range 3 {
		if _, err := appConn.Exec(ctx, insert); err != nil {
			t.Fatal(err)
		}
	}
	// Exactly SELECT, UPDATE and DELETE on the table. (Trying an INSERT
	// would prove nothing: without USAGE on the id sequence it fails even
	// where INSERT is granted.)
	for priv, want := range map[string]bool{
		"SELECT": true, "UPDATE": true, "DELETE": true,
		"INSERT": false, "TRUNCATE": false, "REFERENCES": false, "TRIGGER": false,
	} {
		var has bool
		if err := admin.QueryRow(ctx, `SELECT has_table_privilege('outbox_relay', 'public.portal_event_outbox', $1)`, priv).Scan(&has); err != nil {
			t.Fatal(err)
		}
		if has != want {
			t.Errorf("outbox_relay has %s on the table: %v, want %v", priv, has, want)
		}
	}
	st := store.New(pool, store.DefaultSchema(table))
	claim, err := st.ClaimDue(ctx, 10, 0, time.Minute, 25, nil)
	rows := claim.Rows
	if err != nil || len(rows) != 3 || claim.Len() != 3 {
		t.Fatalf("claim as outbox_relay: %+v, %v; want 3 rows", claim, err)
	}
	if _, _, err := st.Record(ctx, []store.Result{
		{ID: rows[0].ID, Attempt: rows[0].Attempt, Status: store.StatusDelivered},
		{ID: rows[1].ID, Attempt: rows[1].Attempt, Status: store.StatusDead, Error: "HTTP 400"},
	}); err != nil {
		t.Fatalf("record as outbox_relay: %v", err)
	}
	if _, err := st.Release(ctx, rows[2:]); err != nil {
		t.Fatalf("release as outbox_relay: %v", err)
	}
	if stats, err := st.Stats(ctx, true); err != nil || stats.Pending != 1 || stats.Dead != 1 || stats.Delivered != 1 {
		t.Errorf("stats as outbox_relay: %+v, %v; want one row of each status", stats, err)
	}
	if n, err := st.Requeue(ctx, store.RequeueFilter{}, false); err != nil || n != 1 {
		t.Errorf("requeue as outbox_relay: %d, %v; want 1", n, err)
	}
	if n, err := st.DeleteDelivered(ctx, time.Now().Add(time.Hour), 100); err != nil || n != 1 {
		t.Errorf("retention as outbox_relay: %d, %v; want 1", n, err)
	}

	// The fast path: a logical replication connection as outbox_relay
	// creates the slot and streams the publication's inserts.
	rconn, err := pgconn.Connect(ctx, relayURL+"&replication=database")
	if err != nil {
		t.Fatalf("replication connection as outbox_relay: %v", err)
	}
	defer rconn.Close(context.Background())
	if _, err := rconn.Exec(ctx, "CREATE_REPLICATION_SLOT outbox_relay LOGICAL pgoutput").ReadAll(); err != nil {
		t.Fatalf("create slot as outbox_relay: %v", err)
	}
	rconn.Frontend().Send(&pgproto3.Query{String: `START_REPLICATION SLOT outbox_relay LOGICAL 0/0 (proto_version '1', publication_names 'outbox_relay')`})
	if err := rconn.Frontend().Flush(); err != nil {
		t.Fatal(err)
	}
	for started := false; !started; {
		msg, err := rconn.ReceiveMessage(ctx)
		if err != nil {
			t.Fatalf("start replication as outbox_relay: %v", err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyBothResponse:
			started = true
		case *pgproto3.ErrorResponse:
			t.Fatalf("start replication as outbox_relay: %s (%s)", m.Message, m.Code)
		}
	}
	if _, err := appConn.Exec(ctx, insert); err != nil {
		t.Fatal(err)
	}
	if !receiveInsert(ctx, t, rconn) {
		t.Fatal("no insert came through the stream")
	}

	slot, err := store.SlotInfo(ctx, pool, "outbox_relay")
	if err != nil || !slot.Active || slot.MaxSlotWALKeepSize == "" {
		t.Fatalf("slot figures as outbox_relay: %+v, %v; want an active slot", slot, err)
	}
	// The slot guard, on an ordinary connection: it ends the walsender
	// (its own role's) and drops the slot.
	if err := store.DropSlot(ctx, pool, "outbox_relay"); err != nil {
		t.Fatalf("the slot guard as outbox_relay: %v", err)
	}
	if slot, err := store.SlotInfo(ctx, pool, "outbox_relay"); err != nil || slot.Exists {
		t.Errorf("after the guard: %+v, %v; want no slot", slot, err)
	}

	// A publication of the relay's name that leaves the table out is a
	// mistake the script reports instead of granting around it.
	if _, err := admin.Exec(ctx, `CREATE TABLE public.other (id int); CREATE PUBLICATION elsewhere FOR TABLE public.other`); err != nil {
		t.Fatal(err)
	}
	out, err := runScript(t, psql, c.URL("app"), "password="+password, "publication=elsewhere")
	if err == nil || !strings.Contains(out, "does not include the table") {
		t.Errorf("script with a publication that lacks the table: %v\n%s\nwant an error naming the problem", err, out)
	}
}

// receiveInsert reads the stream until pgoutput sends an Insert message.
func receiveInsert(ctx context.Context, t *testing.T, conn *pgconn.PgConn) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			t.Logf("stream: %v", err)
			return false
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			// XLogData: 'w', start, end, clock (8 bytes each), then the
			// pgoutput message, whose first byte is its kind.
			if len(m.Data) > 25 && m.Data[0] == 'w' && m.Data[25] == 'I' {
				return true
			}
		case *pgproto3.ErrorResponse:
			t.Logf("stream: %s", m.Message)
			return false
		}
	}
}
