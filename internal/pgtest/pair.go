package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Pair is a primary with a streaming physical standby, for failover tests:
// stop the primary, Promote the standby, and clients on URL follow.
type Pair struct {
	Primary, Standby *Cluster
}

// standbySlot is the physical slot that keeps the primary's WAL for the
// standby until it has streamed it.
const standbySlot = "pgtest_standby"

// StartPair starts a primary and a standby made from it with
// pg_basebackup -R, streaming from it, and stops both when the test ends.
// With sync the standby is synchronous (synchronous_standby_names = '*'):
// a commit returns only once the standby has flushed it, so a promotion
// loses no acknowledged commit. Without, it replicates asynchronously and
// a promotion can lose the last commits. Both run with synchronous_commit
// on, as production does, whatever the harness's default.
func StartPair(t testing.TB, sync bool) *Pair {
	t.Helper()
	opts := []Option{WithSetting("synchronous_commit", "on")}
	if sync {
		opts = append(opts, WithSetting("synchronous_standby_names", "*"))
	}
	primary := StartT(t, opts...)
	// The standby must not wait for a standby of its own once promoted,
	// so it does not get synchronous_standby_names.
	standby, err := primary.newStandby()
	if err != nil {
		t.Fatalf("pgtest: cannot start a standby: %v", err)
	}
	t.Cleanup(func() {
		if err := standby.Stop(); err != nil {
			t.Errorf("pgtest: stop the standby: %v", err)
		}
	})
	state := "async"
	if sync {
		state = "sync"
	}
	WaitFor(t, time.Minute, "the standby to stream ("+state+")", func() bool {
		var n int
		err := queryOne(primary, &n, `SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = $1`, state)
		return err == nil && n == 1
	})
	return &Pair{Primary: primary, Standby: standby}
}

// queryOne runs a query that returns one value on a fresh connection to
// c's postgres database.
func queryOne(c *Cluster, dest any, sql string, args ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.QueryRow(ctx, sql, args...).Scan(dest)
}

// newStandby copies the primary with pg_basebackup -R (which writes
// primary_conninfo and standby.signal) into a new temporary directory and
// starts it on a port of its own.
func (c *Cluster) newStandby() (*Cluster, error) {
	dir, err := os.MkdirTemp(tempBase(c.cred), "pgtest-standby-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: temp dir: %w", err)
	}
	s := &Cluster{binDir: c.binDir, dir: dir, password: c.password, walLevel: c.walLevel,
		settings: []string{"synchronous_commit=on"}, cred: c.cred}
	if c.cred != nil {
		if err := os.Chown(dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("pgtest: chown %s to postgres: %w", dir, err)
		}
	}
	out, err := s.runEnv([]string{"PGPASSWORD=" + c.password}, "pg_basebackup",
		"-D", s.dataDir(), "-h", "127.0.0.1", "-p", strconv.Itoa(c.port), "-U", "postgres",
		"-R", "-X", "stream", "-C", "-S", standbySlot, "--no-sync")
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: pg_basebackup: %w\n%s", err, out)
	}
	if err := s.startOnFreePort(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// URL is a connection string for database db that names both servers and
// asks for the writable one (target_session_attrs=read-write), as an
// application configured for failover connects: before a switch it reaches
// the primary, after it the promoted standby.
func (p *Pair) URL(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword("postgres", p.Primary.password),
		Host:     "127.0.0.1:" + strconv.Itoa(p.Primary.port) + ",127.0.0.1:" + strconv.Itoa(p.Standby.port),
		Path:     "/" + db,
		RawQuery: "sslmode=disable&target_session_attrs=read-write",
	}
	return u.String()
}

// Promote promotes the standby (pg_ctl promote) and returns once it
// accepts writes, pg_is_in_recovery() false.
func (p *Pair) Promote() error {
	if err := p.Standby.pgCtl("promote"); err != nil {
		return err
	}
	deadline := time.Now().Add(pgCtlTimeout)
	for {
		var inRecovery bool
		err := queryOne(p.Standby, &inRecovery, `SELECT pg_is_in_recovery()`)
		switch {
		case err == nil && !inRecovery:
			return nil
		case time.Now().After(deadline):
			return fmt.Errorf("pgtest: the standby is still in recovery %s after pg_ctl promote (%v); last lines of %s:\n%s",
				pgCtlTimeout, err, filepath.Join(p.Standby.dir, "server.log"), p.Standby.logTail(20))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
