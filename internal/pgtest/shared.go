package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
)

// The server shared by the tests of one test binary, set up by Main.
var (
	shared  *Cluster
	baseURL string // admin URL of the shared server; empty until first use

	adminMu sync.Mutex
	admin   *pgx.Conn // one connection for CREATE/DROP DATABASE, opened on first use
	dbSeq   atomic.Int64
)

// Main runs a package's tests against one shared server and is meant to be
// called from TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// The server is the one in RELAY_TEST_DATABASE_URL if set, else a throwaway
// cluster started by the first NewDB or Shared and stopped after the tests.
// Goroutines still running after passing
// tests fail the binary (goleak), because a leaked goroutine is a loop that
// ignores its context. Without PostgreSQL installed the tests that need it
// are skipped, except under CI (CI set), where a silent skip would hide that
// nothing ran.
func Main(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	code := m.Run()

	adminMu.Lock()
	if admin != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		admin.Close(ctx)
		cancel()
		admin = nil
	}
	adminMu.Unlock()
	if shared != nil {
		if err := shared.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	// As goleak.VerifyTestMain does: failed tests often strand goroutines,
	// and their failure is the report that matters.
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: errors on successful test run: %v\n", err)
			code = 1
		}
	}
	return code
}

// Shared returns the cluster Main manages, starting it on first use, or nil
// when the tests use the server in RELAY_TEST_DATABASE_URL or it cannot
// start.
func Shared() *Cluster {
	_ = ensureShared()
	return shared
}

var (
	sharedOnce sync.Once
	sharedErr  error
)

// ensureShared starts the shared server on first use, so a test binary
// whose tests need no database (a fuzz worker, say) never starts one.
func ensureShared() error {
	sharedOnce.Do(func() {
		if u := os.Getenv(EnvDatabaseURL); u != "" {
			baseURL = u
			return
		}
		c, err := Start()
		if err != nil {
			sharedErr = err
			return
		}
		shared, baseURL = c, c.URL("postgres")
	})
	return sharedErr
}

// NewDB creates a fresh, empty database on the shared server and returns its
// URL; it is dropped when the test ends. A database per test lets tests run
// in parallel without seeing each other's rows, slots or publications.
func NewDB(t testing.TB) string {
	t.Helper()
	if err := ensureShared(); err != nil {
		if errors.Is(err, errNoPostgres) && os.Getenv("CI") == "" {
			t.Skipf("pgtest: skipping: %v", err)
		}
		t.Fatalf("pgtest: cannot start a throwaway PostgreSQL: %v", err)
	}
	// The pid keeps names apart when several test binaries (go test ./...)
	// share the server in RELAY_TEST_DATABASE_URL.
	name := fmt.Sprintf("test_%d_%d", os.Getpid(), dbSeq.Add(1))
	ident := pgx.Identifier{name}.Sanitize()
	if err := adminExec("CREATE DATABASE " + ident + " TEMPLATE template0"); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := dropDB(name); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(baseURL)
	if err != nil {
		t.Fatalf("pgtest: parse %s: %v", EnvDatabaseURL, err)
	}
	u.Path, u.RawPath = "/"+name, ""
	return u.String()
}

// dropDB drops a test database. DROP DATABASE drops the database's logical
// slots itself, but refuses while a walsender holds one (a process the test
// just killed may not have noticed yet), and FORCE ends other sessions
// only after that check: end those walsenders first, and retry.
func dropDB(name string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		_ = adminExec(`SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL`, name)
		err := adminExec("DROP DATABASE IF EXISTS " + pgx.Identifier{name}.Sanitize() + " WITH (FORCE)")
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// adminExec runs one statement on the shared admin connection, which is
// opened once because connecting costs more than CREATE DATABASE from
// template0 with fsync off. A pgx.Conn serves one caller at a time, hence the
// mutex. A broken connection (the server was restarted) is replaced once.
func adminExec(sql string, args ...any) error {
	adminMu.Lock()
	defer adminMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	for try := 0; try < 2; try++ {
		if admin == nil || admin.IsClosed() {
			if admin, err = pgx.Connect(ctx, baseURL); err != nil {
				admin = nil
				return fmt.Errorf("connect: %w", err)
			}
		}
		if _, err = admin.Exec(ctx, sql, args...); err == nil || !admin.IsClosed() {
			return err
		}
	}
	return err
}
