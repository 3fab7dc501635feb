package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sethvargo/go-retry"
	"golang.org/x/sync/errgroup"

	"github.com/outbox-relay/outbox-relay/cdc"
	"github.com/outbox-relay/outbox-relay/internal/config"
	"github.com/outbox-relay/outbox-relay/internal/handover"
	"github.com/outbox-relay/outbox-relay/internal/monitor"
	"github.com/outbox-relay/outbox-relay/internal/procs"
	"github.com/outbox-relay/outbox-relay/internal/retention"
	"github.com/outbox-relay/outbox-relay/internal/store"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/sweeper"
)

// service is every long-running part: it runs until ctx is done.
type service interface {
	Run(ctx context.Context) error
}

func runRelay(ctx context.Context, args, environ []string, stderr io.Writer) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("run takes no arguments, got %q; settings are RELAY_* variables (see --help)", args[0])}
	}
	cfg, err := config.Load(environ, config.NeedRunner)
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	pool, err := openPool(ctx, cfg, 8)
	if err != nil {
		return err
	}
	defer pool.Close()
	schema, err := waitForSchema(ctx, pool, cfg, log)
	switch {
	case err != nil && ctx.Err() != nil:
		log.Info("stopped before start-up completed")
		return nil
	case errors.Is(err, store.ErrCannotOrder):
		// The ordering key is a setting the table cannot honour.
		return usageError{err}
	case err != nil:
		return err
	}
	st, closeWriter, err := relayStore(ctx, cfg, pool, schema, log)
	if err != nil {
		return err
	}
	defer closeWriter()
	metrics := monitor.NewMetrics()
	if st.Ordered() {
		metrics.WatchOrdering()
	}
	tracing, err := startTracing(ctx, cfg.Tracing, log)
	if err != nil {
		return err
	}
	defer tracing.stop(cfg.ShutdownGrace)
	dcfg := delivererConfig(cfg)
	dcfg.Tracer = tracing.tracer()
	d := relay.New(dcfg, st, log, metrics)
	metrics.WatchRunner(d.Runner)
	stream, err := startupCDC(ctx, cfg, st.Schema(), d, log)
	if err != nil {
		return err
	}
	services, err := relayServices(cfg, pool, st, d, stream, metrics, log)
	if err != nil {
		return err
	}
	log.Info("outbox-relay starting", "version", version, "table", cfg.Table.String(),
		"cdc", cfg.CDC, "sweep_interval", cfg.SweepInterval.String(), "concurrency", cfg.Concurrency,
		"ordered_by", orderedBy(cfg, st))
	return serve(ctx, d, services, cfg.ShutdownGrace, log)
}

// relayServices are the parts that run beside the deliverer: the sweeper,
// retention, the watcher, the process sizer, the stream when this process
// streams, and the monitoring server unless RELAY_LISTEN_ADDR=off. The
// server listens here, before anything starts, so that a taken port stops
// start-up with nothing to unwind.
func relayServices(cfg config.Config, pool *pgxpool.Pool, st *store.Store, d *relay.Deliverer, stream *cdc.Stream,
	metrics *monitor.Metrics, log *slog.Logger) ([]service, error) {
	watcher := monitor.NewWatcher(watchConfig(cfg, stream, st, metrics, log), st, metrics, log)
	services := []service{
		sweeper.New(sweepConfig(cfg, stream, metrics), d, st, log),
		retention.New(retentionConfig(cfg, metrics), st, log),
		watcher,
		procs.Sizer{Log: log},
	}
	if stream != nil {
		services = append(services, stream)
	}
	if cfg.ListenAddr != "off" {
		srv, err := monitor.NewServer(cfg.ListenAddr, pool, metrics, watcher, d, log)
		if err != nil {
			return nil, fmt.Errorf("listen on RELAY_LISTEN_ADDR: %w", err)
		}
		log.Info("serving /healthz, /readyz and /metrics", "addr", srv.Addr())
		services = append(services, srv)
	}
	return services, nil
}

// serve runs the services until ctx is done or one fails, then lets the
// deliverer drain. The deliverer gets its own context: it must outlive the
// claimers so that it can finish what they queued, and it stops when they
// have.
func serve(ctx context.Context, d *relay.Deliverer, services []service, grace time.Duration, log *slog.Logger) error {
	dctx, stopDeliverer := context.WithCancel(context.WithoutCancel(ctx))
	defer stopDeliverer()
	delivered := make(chan error, 1)
	go func() { delivered <- d.Run(dctx) }()

	g, gctx := errgroup.WithContext(ctx)
	for _, s := range services {
		g.Go(func() error { return s.Run(gctx) })
	}
	err := g.Wait()

	log.Info("stopping: finishing in-flight deliveries", "grace", grace.String())
	stopDeliverer()
	if derr := <-delivered; err == nil {
		err = derr
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Info("stopped")
	return nil
}

// orderedBy names the column that orders delivery and the dead-row
// policy, for the start-up log; "none" when rows go in any order.
func orderedBy(cfg config.Config, st *store.Store) string {
	if !st.Ordered() {
		return "none"
	}
	return cfg.Columns[store.RoleOrderingKey] + " in order of " + st.Schema().OrderColumn() + " (on dead: " + string(cfg.OnDead) + ")"
}

// relayStore is the store the relay runs on: claims through pool, and
// with the stream, outcomes through a session of their own (openWriter).
// The returned func closes that session.
func relayStore(ctx context.Context, cfg config.Config, pool *pgxpool.Pool, schema *store.Schema, log *slog.Logger) (*store.Store, func(), error) {
	opts := []store.Option{store.WithOrderingOnDead(cfg.OnDead)}
	if cfg.CDC == "off" {
		return store.New(pool, schema, opts...), func() {}, nil
	}
	writer, err := openWriter(ctx, cfg, log)
	if err != nil {
		return nil, nil, err
	}
	return store.New(pool, schema, append(opts, store.WithWriter(writer))...), writer.Close, nil
}

func delivererConfig(cfg config.Config) relay.Config {
	c := relay.Config{
		RunnerURL:     cfg.RunnerURL,
		SigningKey:    cfg.SigningKey,
		Token:         cfg.RunnerToken,
		UserAgent:     "outbox-relay/" + version,
		HTTPTimeout:   cfg.HTTPTimeout,
		Concurrency:   cfg.Concurrency,
		MaxAttempts:   cfg.MaxAttempts,
		Backoff:       relay.Backoff{Base: cfg.BackoffBase, Max: cfg.BackoffMax, Jitter: cfg.BackoffJitter},
		ShutdownGrace: cfg.ShutdownGrace,
		ProbeMax:      cfg.ProbeMax,
	}
	if cfg.CDC != "off" {
		c.FreshGrace = handover.Grace
	}
	return c
}

func sweepConfig(cfg config.Config, stream *cdc.Stream, metrics *monitor.Metrics) sweeper.Config {
	// Every sweeper leaves never-tried rows to the stream for the grace,
	// whether or not this process streams: another replica's may.
	c := sweeper.Config{Interval: cfg.SweepInterval, BatchSize: cfg.BatchSize, Grace: handover.Grace, OnSweep: metrics.ObserveSweep}
	if stream != nil {
		c.Wake, c.Nudge = stream.Wake(), stream.Dropped()
	}
	return c
}

func retentionConfig(cfg config.Config, metrics *monitor.Metrics) retention.Config {
	return retention.Config{
		Keep: cfg.Retention,
		// A pass with nothing to delete scans the table (no index
		// serves delivered_at), so passes are rare and large: up to
		// 200,000 rows per 10 minutes, a thousand per DELETE.
		Interval:  10 * time.Minute,
		BatchSize: 1000,
		MaxBatch:  200,
		OnDelete:  metrics.AddRetentionDeleted,
	}
}

// watchConfig watches and guards the slot only when this process streams;
// it also exports the stream's state as metrics, read at scrape time.
func watchConfig(cfg config.Config, stream *cdc.Stream, st *store.Store, metrics *monitor.Metrics, log *slog.Logger) monitor.WatchConfig {
	c := monitor.WatchConfig{Interval: cfg.StatsInterval}
	if stream != nil {
		c.Slot = cfg.SlotName
		c.Guard = cdc.NewGuard(cdc.GuardConfig{Slot: cfg.SlotName, WarnBytes: cfg.SlotWarnBytes, MaxBytes: cfg.SlotMaxBytes}, st.Pool(), log)
		c.CDC = func() monitor.CDCState {
			st := stream.State()
			// A server that cannot stream leaves the relay sweep-only
			// until it can: not enabled, so no alert waits for a slot.
			return monitor.CDCState{Enabled: st.Role != cdc.RoleUnavailable, Connected: st.Connected, Role: st.Role}
		}
		metrics.WatchCDC(c.CDC)
	}
	return c
}

// cdcCheckTimeout bounds the start-up check of logical replication.
const cdcCheckTimeout = 10 * time.Second

// startupCDC decides whether the replication fast path runs: never with
// RELAY_CDC=off; with on, a server that cannot do it as configured stops
// the relay (exit 2), while a passing refusal (every WAL sender busy, the
// server starting) does not: the stream tries again, as it does after any
// reconnect, and the sweeper delivers meanwhile. With auto the stream
// always runs and decides on every reconnect: a server that cannot stream
// leaves the relay sweep-only (it says why once and checks again now and
// then), so a failover to a server that can, or an operator's fix, brings
// the stream back without a restart.
func startupCDC(ctx context.Context, cfg config.Config, outbox *store.Schema, d cdc.Deliverer, log *slog.Logger) (*cdc.Stream, error) {
	if cfg.CDC == "off" {
		return nil, nil
	}
	ccfg := cdcConfig(cfg, outbox)
	if cfg.CDC == "on" {
		cctx, cancel := context.WithTimeout(ctx, cdcCheckTimeout)
		err := cdc.Check(cctx, ccfg)
		cancel()
		switch {
		case cdc.Lasting(err):
			return nil, usageError{fmt.Errorf("RELAY_CDC=on but logical replication is unavailable: %v", err)}
		case err != nil:
			log.Warn("replication: not ready yet; the stream tries again and the sweeper delivers meanwhile", "reason", err.Error())
		}
	}
	return cdc.New(ccfg, d, log), nil
}

// cdcConfig is the stream's configuration; check judges the same slot and
// publication. outbox is the table as inspected, nil where no row is
// decoded.
func cdcConfig(cfg config.Config, outbox *store.Schema) cdc.Config {
	return cdc.Config{
		DatabaseURL: cfg.DatabaseURL,
		Schema:      cfg.Table.Schema,
		Table:       cfg.Table.Name,
		IDColumn:    cfg.Columns[store.RoleID],
		Slot:        cfg.SlotName,
		Publication: cfg.Publication,
		BatchSize:   cfg.BatchSize,
		Outbox:      outbox,
		SkipOrigins: true,
	}
}

// waitForSchema checks the outbox table against the column mapping,
// waiting while the database is unreachable. A table the relay cannot use
// stops it: that needs a migration or a mapping, not patience.
func waitForSchema(ctx context.Context, pool *pgxpool.Pool, cfg config.Config, log *slog.Logger) (*store.Schema, error) {
	b := retry.WithCappedDuration(10*time.Second, retry.NewExponential(200*time.Millisecond))
	warned := false
	var schema *store.Schema
	err := retry.Do(ctx, b, func(ctx context.Context) error {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := pool.Ping(cctx); err != nil {
			if !warned {
				log.Warn("waiting for the database", "error", err)
				warned = true
			}
			return retry.RetryableError(err)
		}
		var err error
		schema, err = store.Inspect(cctx, pool, cfg.Table, cfg.Columns, cfg.Statuses)
		return err
	})
	return schema, err
}
