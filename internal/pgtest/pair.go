package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
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
// standby until it has streamed it (the standby's primary_slot_name).
const standbySlot = "pgtest_standby"

// PairOption changes how StartPair sets up the two servers.
type PairOption func(*pairConfig)

type pairConfig struct {
	slotSync bool
}

// WithSlotSync makes the standby keep copies of the primary's failover
// logical slots (PostgreSQL 17 and newer; the test skips below with
// SkipBelow): the standby runs with sync_replication_slots and
// hot_standby_feedback on and names the primary's database in
// primary_conninfo, and the primary with synchronized_standby_slots naming
// the standby's physical slot, so that no logical walsender sends a change
// the standby has not flushed.
func WithSlotSync() PairOption {
	return func(c *pairConfig) { c.slotSync = true }
}

// StartPair starts a primary and a standby made from a copy of its data
// directory, streaming from it, and stops both when the test ends.
// With sync the standby is synchronous (synchronous_standby_names = '*'):
// a commit returns only once the standby has flushed it, so a promotion
// loses no acknowledged commit. Without, it replicates asynchronously and
// a promotion can lose the last commits. Both run with synchronous_commit
// on, as production does, whatever the harness's default.
func StartPair(t testing.TB, sync bool, opts ...PairOption) *Pair {
	t.Helper()
	var cfg pairConfig
	for _, o := range opts {
		o(&cfg)
	}
	primaryOpts := []Option{WithSetting("synchronous_commit", "on")}
	if sync {
		primaryOpts = append(primaryOpts, WithSetting("synchronous_standby_names", "*"))
	}
	if cfg.slotSync {
		primaryOpts = append(primaryOpts, WithSetting("synchronized_standby_slots", standbySlot))
	}
	primary := StartT(t, primaryOpts...)
	// The standby must not wait for a standby of its own once promoted,
	// so it does not get synchronous_standby_names.
	standbySettings := []string{"synchronous_commit=on"}
	if cfg.slotSync {
		standbySettings = append(standbySettings, "sync_replication_slots=on", "hot_standby_feedback=on")
	}
	standby, err := primary.newStandby(standbySettings)
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

// newStandby makes a standby of c with settings of its own and starts it
// on a port of its own. It copies the data directory of the cleanly
// stopped primary, which needs no pg_basebackup (the binaries of
// make test-matrix have none): a shutdown checkpoint leaves the directory
// consistent, and the physical slot made before the stop keeps the WAL
// from there until the standby streams.
func (c *Cluster) newStandby(settings []string) (*Cluster, error) {
	if err := queryOne(c, new(string), `SELECT pg_create_physical_replication_slot($1, true)::text`, standbySlot); err != nil {
		return nil, fmt.Errorf("pgtest: create the standby's slot: %w", err)
	}
	dir, err := os.MkdirTemp(tempBase(c.cred), "pgtest-standby-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: temp dir: %w", err)
	}
	s := &Cluster{binDir: c.binDir, dir: dir, password: c.password, walLevel: c.walLevel, settings: settings, cred: c.cred}
	if err := s.setUp(func() error { return s.copyFrom(c) }); err != nil {
		return nil, err
	}
	return s, nil
}

// copyFrom stops the primary c, copies its data directory into s as the
// server's user, makes the copy a standby of c and starts c again.
func (s *Cluster) copyFrom(c *Cluster) error {
	if c.cred != nil {
		if err := os.Chown(s.dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return fmt.Errorf("pgtest: chown %s to postgres: %w", s.dir, err)
		}
	}
	if err := c.StopServer("fast"); err != nil {
		return err
	}
	cmd := exec.Command("cp", "-a", c.dataDir(), s.dataDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred, Setpgid: true}
	out, err := cmd.CombinedOutput()
	if err == nil {
		err = s.makeStandbyOf(c)
	}
	if startErr := c.StartServer(); err == nil {
		err = startErr
	}
	if err != nil {
		return fmt.Errorf("pgtest: copy the primary into a standby: %w\n%s", err, out)
	}
	return nil
}

// makeStandbyOf turns a copied data directory into a standby of c:
// standby.signal, and where to stream from in postgresql.auto.conf, as
// pg_basebackup -R writes them. The primary's slots stay behind, as a
// base backup leaves them: a copy of the standby's own physical slot would
// pin the WAL of the promoted standby for ever. The dbname in
// primary_conninfo is what sync_replication_slots needs to reach the
// primary's slots.
func (s *Cluster) makeStandbyOf(c *Cluster) error {
	slots, err := filepath.Glob(filepath.Join(s.dataDir(), "pg_replslot", "*"))
	if err != nil {
		return err
	}
	for _, slot := range slots {
		if err := os.RemoveAll(slot); err != nil {
			return err
		}
	}
	conninfo := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres application_name=%s",
		c.port, c.password, standbySlot)
	conf := fmt.Sprintf("primary_conninfo = '%s'\nprimary_slot_name = '%s'\n", conninfo, standbySlot)
	if err := s.appendFile("postgresql.auto.conf", conf); err != nil {
		return err
	}
	return s.appendFile("standby.signal", "")
}

// appendFile appends text to a file of the data directory, creating it
// owned by the server's user.
func (s *Cluster) appendFile(name, text string) error {
	path := filepath.Join(s.dataDir(), name)
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(text)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && s.cred != nil {
		err = os.Chown(path, int(s.cred.Uid), int(s.cred.Gid))
	}
	return err
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
