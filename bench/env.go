package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

// epoch is the zero of every timestamp the harness keeps: offsets from it
// are read on the monotonic clock, so inserter and runner agree.
var epoch = time.Now()

// now is the time since epoch in nanoseconds.
func now() int64 { return int64(time.Since(epoch)) }

// since is t as nanoseconds since epoch; the zero time (no receipt) is 0.
func since(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return int64(t.Sub(epoch))
}

// table is the outbox table `outbox-relay migrate` creates by default.
const table = "public.portal_event_outbox"

// bench is the environment every measure runs in.
type bench struct {
	plan    plan
	out     io.Writer
	verbose bool

	tmp     string
	binary  string
	cluster *pgtest.Cluster
	admin   *pgxpool.Pool // the postgres database: CREATE/DROP DATABASE, slot queries
	runner  *relaytest.Runner

	dbSeq  int
	quiet  time.Duration // longest wait for a quiet machine before a run
	waited time.Duration // spent waiting so far, bounded by quietBudget
	relays []relayStats  // one per relay process, for the cost table

	// relayUser is the role every relay logs in as, its own so that
	// pg_stat_statements (which knows roles, not application names) can
	// tell the relay's statements from the load's; statements says
	// whether the cluster preloads pg_stat_statements.
	relayUser, relayPassword string
	statements               bool

	mu    sync.Mutex
	procs map[*relayProc]bool // running, stopped by close
	dbs   map[*database]bool
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.out, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func (b *bench) debugf(format string, args ...any) {
	if b.verbose {
		b.logf(format, args...)
	}
}

// setup builds the relay, starts the cluster and the runner. On error it
// cleans up what it started.
func setup(ctx context.Context, p plan, out io.Writer, verbose bool) (_ *bench, err error) {
	b := &bench{plan: p, out: out, verbose: verbose, procs: map[*relayProc]bool{}, dbs: map[*database]bool{}}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	if b.tmp, err = os.MkdirTemp("", "outbox-relay-bench-"); err != nil {
		return nil, err
	}
	b.logf("building the relay")
	if b.binary, err = relaytest.Build(ctx, b.tmp, relaytest.BuildOptions{}); err != nil {
		return nil, err
	}
	b.logf("starting PostgreSQL")
	var opts []pgtest.Option
	if lib, ok := statementsLibrary(); ok {
		opts = append(opts, pgtest.WithSetting("shared_preload_libraries", "pg_stat_statements"))
		b.debugf("preloading %s", lib)
	}
	if b.cluster, err = pgtest.Start(opts...); err != nil {
		return nil, err
	}
	if b.admin, err = openPool(ctx, b.cluster.URL("postgres"), 4); err != nil {
		return nil, err
	}
	if err := b.setupRelayRole(ctx, len(opts) > 0); err != nil {
		return nil, err
	}
	if b.runner, err = relaytest.StartRunner(); err != nil {
		return nil, err
	}
	return b, nil
}

// close stops everything still running, in reverse order of start. It uses
// its own deadline: it also runs after Ctrl-C cancelled the main context.
func (b *bench) close() {
	b.mu.Lock()
	procs := make([]*relayProc, 0, len(b.procs))
	for p := range b.procs {
		procs = append(procs, p)
	}
	dbs := make([]*database, 0, len(b.dbs))
	for d := range b.dbs {
		dbs = append(dbs, d)
	}
	b.mu.Unlock()
	for _, p := range procs {
		p.kill()
	}
	for _, d := range dbs {
		d.pool.Close()
	}
	if b.runner != nil {
		b.runner.Stop()
	}
	if b.admin != nil {
		b.admin.Close()
	}
	if b.cluster != nil {
		if err := b.cluster.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "bench: stop PostgreSQL:", err)
		}
	}
	if b.tmp != "" {
		os.RemoveAll(b.tmp)
	}
}

func openPool(ctx context.Context, url string, conns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = conns
	cfg.ConnConfig.RuntimeParams["application_name"] = "bench"
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(cctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := pool.Ping(cctx); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// poll calls cond every interval until it holds, fails, or limit has
// passed; it reports whether cond held. A cancelled ctx ends it with
// ctx's error.
func poll(ctx context.Context, limit, interval time.Duration, cond func() (bool, error)) (bool, error) {
	deadline := time.Now().Add(limit)
	for {
		if ok, err := cond(); ok || err != nil {
			return ok, err
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		if err := sleep(ctx, interval); err != nil {
			return false, err
		}
	}
}
