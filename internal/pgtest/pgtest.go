// Package pgtest gives tests a real, throwaway PostgreSQL: a cluster made with
// initdb and pg_ctl in a temporary directory on a free port, or the server
// named by RELAY_TEST_DATABASE_URL. Tests run against a real server because a
// mock of pgx tests nothing about locks, constraints or replication.
//
// A package's tests share one server per test binary (Main) and get a fresh
// database each (NewDB); a test that must change server settings or restart
// the server starts its own cluster (StartT).
package pgtest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
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

// pgCtlTimeout bounds how long pg_ctl -w waits for start, stop and restart.
const pgCtlTimeout = 60 * time.Second

// FindBinDir returns the directory holding initdb and pg_ctl: the one in
// RELAY_TEST_PG_BINDIR when set, else it looks on PATH, then at
// `pg_config --bindir`, then at the newest /usr/lib/postgresql/*/bin,
// because Debian installs the server binaries there without putting them
// on PATH.
func FindBinDir() (string, error) {
	if dir := os.Getenv(EnvBinDir); dir != "" {
		// Named on purpose, so a wrong one fails rather than skips.
		if !hasServerBinaries(dir) {
			return "", fmt.Errorf("pgtest: %s=%s holds no initdb, pg_ctl and postgres", EnvBinDir, dir)
		}
		return dir, nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		// PATH often holds symlinks (e.g. /usr/local/bin/initdb); the real
		// directory is where postgres itself lives too.
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		if dir := filepath.Dir(p); hasServerBinaries(dir) {
			return dir, nil
		}
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		// Debian's pg_config comes with libpq-dev and may name a bindir
		// whose server binaries are not installed, so check.
		if dir := strings.TrimSpace(string(out)); hasServerBinaries(dir) {
			return dir, nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(matches, func(i, j int) bool { return majorVersion(matches[i]) > majorVersion(matches[j]) })
	for _, m := range matches {
		if dir := filepath.Dir(m); hasServerBinaries(dir) {
			return dir, nil
		}
	}
	return "", fmt.Errorf("%w: searched PATH, `pg_config --bindir` and /usr/lib/postgresql/*/bin; "+
		"install the server (Debian/Ubuntu: apt-get install postgresql) or set %s or %s", errNoPostgres, EnvBinDir, EnvDatabaseURL)
}

func hasServerBinaries(dir string) bool {
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return false
		}
	}
	return true
}

// majorVersion reads 15 from /usr/lib/postgresql/15/bin/initdb (9.6 reads
// as 9), so that 15 sorts above 9.6, which a string sort would not do.
func majorVersion(initdbPath string) int {
	v := filepath.Base(filepath.Dir(filepath.Dir(initdbPath)))
	n, _ := strconv.Atoi(strings.SplitN(v, ".", 2)[0])
	return n
}

// Option changes how Start sets up a cluster.
type Option func(*config)

type config struct {
	walLevel string
	settings []string
}

// WithWalLevel sets wal_level (default "logical"); "replica" lets a test
// exercise the sweep-only fallback of a server without logical replication.
func WithWalLevel(level string) Option {
	return func(c *config) { c.walLevel = level }
}

// WithSetting sets a server setting (name=value), after and so over the
// harness's own: e.g. synchronous_commit=on for a test that crashes the
// server and must not lose acknowledged commits.
func WithSetting(name, value string) Option {
	return func(c *config) { c.settings = append(c.settings, name+"="+value) }
}

// Cluster is a throwaway PostgreSQL server in a temporary directory. Its
// methods are not meant to be called concurrently.
type Cluster struct {
	binDir   string
	dir      string // temp dir: data/, server.log, unix socket
	port     int
	password string
	walLevel string
	settings []string            // extra server settings, name=value
	cred     *syscall.Credential // nil unless we run as root
}

// URL is the connection string for database db, over TCP with the password,
// as an application would connect.
func (c *Cluster) URL(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword("postgres", c.password),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Port is the TCP port the server listens on at 127.0.0.1.
func (c *Cluster) Port() int { return c.port }

// Dir is the temporary directory holding the data directory (data/), the
// server log (server.log) and the unix socket.
func (c *Cluster) Dir() string { return c.dir }

// BinDir is the directory of the PostgreSQL binaries the cluster runs.
func (c *Cluster) BinDir() string { return c.binDir }

// Password is the password of the postgres superuser; host connections
// really need it (scram-sha-256), as they would in production.
func (c *Cluster) Password() string { return c.password }

func (c *Cluster) dataDir() string { return filepath.Join(c.dir, "data") }
func (c *Cluster) logFile() string { return filepath.Join(c.dir, "server.log") }

// Start creates a cluster with initdb in a new temporary directory and starts
// it on a free port on 127.0.0.1, tuned for tests (no fsync) and with
// wal_level=logical unless an Option says otherwise. Stop removes it.
func Start(opts ...Option) (*Cluster, error) {
	cfg := config{walLevel: "logical"}
	for _, o := range opts {
		o(&cfg)
	}
	binDir, err := FindBinDir()
	if err != nil {
		return nil, err
	}
	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(tempBase(cred), "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: temp dir: %w", err)
	}
	c := &Cluster{binDir: binDir, dir: dir, password: rand.Text(), walLevel: cfg.walLevel, settings: cfg.settings, cred: cred}
	if err := c.initdb(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := c.startOnFreePort(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return c, nil
}

// startOnFreePort starts the server of a cluster whose data directory is
// ready. A port picked free can be taken before the server binds it; then
// a fresh port is worth another try. Any other failure is final.
func (c *Cluster) startOnFreePort() error {
	for attempt := 1; ; attempt++ {
		var err error
		if c.port, err = freePort(); err != nil {
			return err
		}
		err = c.StartServer()
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "could not bind") {
			return err
		}
	}
}

// StartT starts a cluster for one test and stops it when the test ends.
// Without PostgreSQL installed it skips the test, or fails it when CI is set.
func StartT(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	c, err := Start(opts...)
	if errors.Is(err, errNoPostgres) && os.Getenv("CI") == "" {
		t.Skipf("pgtest: skipping: %v", err)
	}
	if err != nil {
		t.Fatalf("pgtest: cannot start a throwaway PostgreSQL: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("pgtest: stop: %v", err)
		}
	})
	return c
}

// serverCredential returns the postgres system user to run the server as
// when we are root, because PostgreSQL refuses to run as root; nil otherwise.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root, so the server must run as the postgres user: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgtest: uid of postgres: %w", err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgtest: gid of postgres: %w", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// tempBase is where the cluster directory goes. The postgres user must be
// able to reach it, and TMPDIR may be under root's private home, so when we
// run as root and TMPDIR is not traversable by others, use /tmp.
func tempBase(cred *syscall.Credential) string {
	base := os.TempDir()
	if cred == nil {
		return base
	}
	for d := base; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
		if d == filepath.Dir(d) {
			return base
		}
	}
}

// freePort asks the kernel for a free port by listening on :0 and closing.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (c *Cluster) initdb() error {
	if c.cred != nil {
		if err := os.Chown(c.dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return fmt.Errorf("pgtest: chown %s to postgres: %w", c.dir, err)
		}
	}
	pwfile := filepath.Join(c.dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(c.password+"\n"), 0o600); err != nil {
		return fmt.Errorf("pgtest: write password file: %w", err)
	}
	defer os.Remove(pwfile)
	if c.cred != nil {
		if err := os.Chown(pwfile, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return fmt.Errorf("pgtest: chown password file: %w", err)
		}
	}
	// --no-sync: the cluster is thrown away, so durability is wasted time.
	if out, err := c.run("initdb", "-D", c.dataDir(), "-U", "postgres", "-E", "UTF8", "--no-locale",
		"--auth-local=trust", "--auth-host=scram-sha-256", "--pwfile="+pwfile, "--no-sync"); err != nil {
		return fmt.Errorf("pgtest: initdb: %w\n%s", err, out)
	}
	return c.ensureReplicationHBA()
}

// ensureReplicationHBA makes sure pg_hba.conf lets the relay open a
// replication connection over TCP with the password. initdb's default file
// has this line; check rather than trust it, since the CDC tests need it.
func (c *Cluster) ensureReplicationHBA() error {
	path := filepath.Join(c.dataDir(), "pg_hba.conf")
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("pgtest: read pg_hba.conf: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Join(strings.Fields(line), " ") == "host replication all 127.0.0.1/32 scram-sha-256" {
			return nil
		}
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("pgtest: open pg_hba.conf: %w", err)
	}
	_, err = f.WriteString("host replication all 127.0.0.1/32 scram-sha-256\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pgtest: append to pg_hba.conf: %w", err)
	}
	return nil
}

// serverOptions are the -c settings given to postgres through pg_ctl -o.
// pg_ctl hands -o to /bin/sh, hence the quoting.
func (c *Cluster) serverOptions() string {
	settings := []string{
		"listen_addresses=127.0.0.1",
		"port=" + strconv.Itoa(c.port),
		"unix_socket_directories=" + c.dir,
		"wal_level=" + c.walLevel,
		"max_replication_slots=20",
		"max_wal_senders=20",
		// Durability is wasted on a throwaway cluster; these make
		// CREATE DATABASE and commits fast.
		"fsync=off",
		"synchronous_commit=off",
		"full_page_writes=off",
		"shared_buffers=64MB",
		"max_connections=200",
		"logging_collector=off",
	}
	settings = append(settings, c.settings...) // the last -c of a name wins
	var b strings.Builder
	for _, s := range settings {
		b.WriteString(" -c '" + strings.ReplaceAll(s, "'", `'\''`) + "'")
	}
	return b.String()
}

// StartServer starts the server of a stopped cluster on its port, keeping
// the data, and waits until it accepts connections. With StopServer it
// simulates a database outage.
func (c *Cluster) StartServer() error {
	return c.pgCtl("start", "-l", c.logFile(), "-o", c.serverOptions())
}

// StopServer stops the server with pg_ctl stop -m mode ("smart", "fast" or
// "immediate") and keeps the data, for outage tests.
func (c *Cluster) StopServer(mode string) error {
	return c.pgCtl("stop", "-m", mode)
}

// Restart restarts the server with pg_ctl restart -m mode; "immediate" is a
// crash as far as clients and replication slots can tell. It returns once
// the server accepts connections again.
func (c *Cluster) Restart(mode string) error {
	return c.pgCtl("restart", "-m", mode, "-l", c.logFile(), "-o", c.serverOptions())
}

// Stop stops the server (fast shutdown) and removes the cluster directory.
// It is safe to call again, and after StopServer. When the server does not
// stop, the directory is kept so its log can be read.
func (c *Cluster) Stop() error {
	if _, err := os.Stat(filepath.Join(c.dataDir(), "postmaster.pid")); err == nil {
		if err := c.StopServer("fast"); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(c.dir); err != nil {
		return fmt.Errorf("pgtest: remove %s: %w", c.dir, err)
	}
	return nil
}

// pgCtl runs pg_ctl with -w so that it returns only once the server has
// reached the asked state (or the timeout passed): no polling of our own.
func (c *Cluster) pgCtl(action string, args ...string) error {
	full := append([]string{action, "-D", c.dataDir(), "-w", "-t", strconv.Itoa(int(pgCtlTimeout.Seconds()))}, args...)
	if out, err := c.run("pg_ctl", full...); err != nil {
		return fmt.Errorf("pgtest: pg_ctl %s: %w\n%s\nlast lines of %s:\n%s", action, err,
			strings.TrimSpace(string(out)), c.logFile(), c.logTail(20))
	}
	return nil
}

// run runs a PostgreSQL binary, as the postgres user when we are root.
func (c *Cluster) run(name string, args ...string) ([]byte, error) {
	return c.runEnv(nil, name, args...)
}

// runEnv is run with extra environment variables (PGPASSWORD, say).
func (c *Cluster) runEnv(env []string, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(filepath.Join(c.binDir, name), args...)
	cmd.Dir = c.dir // the postgres user may not be able to enter our working directory
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), env...)
	// Its own process group keeps a Ctrl-C meant for the test (or the
	// demo) from cutting pg_ctl short and stranding a server or its files.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred, Setpgid: true}
	return cmd.CombinedOutput()
}

func (c *Cluster) logTail(n int) string {
	b, err := os.ReadFile(c.logFile())
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

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
