package pgtest

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pgCtlTimeout bounds how long pg_ctl -w waits for start, stop and restart.
const pgCtlTimeout = 60 * time.Second

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
	if err := c.setUp(c.initdb); err != nil {
		return nil, err
	}
	return c, nil
}

// setUp makes the data directory with prepare and starts the server on a
// free port; when either fails it removes the cluster's directory.
func (c *Cluster) setUp(prepare func() error) error {
	err := prepare()
	if err == nil {
		err = c.startOnFreePort()
	}
	if err != nil {
		os.RemoveAll(c.dir)
	}
	return err
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
