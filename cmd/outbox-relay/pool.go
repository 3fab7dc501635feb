package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/config"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// openPool makes a pool of at most maxConns sessions set up as the relay's
// (store.Configure). pgxpool connects lazily, so this does not wait for the
// database: run waits in waitForSchema, the short commands in connectStore.
func openPool(ctx context.Context, cfg config.Config, maxConns int32) (*pgxpool.Pool, error) {
	pcfg := cfg.DB.Copy()
	pcfg.MaxConns = maxConns
	store.Configure(pcfg)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("database pool: %w", err)
	}
	return pool, nil
}

// openWriter makes the one-session pool the relay writes outcomes
// through. Its session takes a replication origin where the server can
// filter changes by one (store.TakeOrigin), so the stream never receives
// those writes; where it cannot, it writes as any session does, and says
// why once.
func openWriter(ctx context.Context, cfg config.Config, log *slog.Logger) (*pgxpool.Pool, error) {
	pcfg := cfg.DB.Copy()
	pcfg.MaxConns = 1
	store.Configure(pcfg)
	var said atomic.Bool
	pcfg.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
		name, err := store.TakeOrigin(ctx, conn, cfg.SlotName)
		switch {
		case err != nil && !said.Swap(true):
			log.Info("outcome writes carry no replication origin: the stream receives them too", "reason", err.Error())
		case err == nil:
			log.Debug("outcome writes carry a replication origin", "origin", name)
		}
		return nil
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("database pool: %w", err)
	}
	return pool, nil
}

// connectStore opens a one-connection store for the short-lived commands,
// failing at once when the database cannot be reached or the table cannot
// be used (a *store.SchemaError naming the column and the fix).
func connectStore(ctx context.Context, cfg config.Config) (*store.Store, error) {
	pool, err := openPool(ctx, cfg, 1)
	if err != nil {
		return nil, err
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect: %w", err)
	}
	schema, err := store.Inspect(ctx, pool, cfg.Table, cfg.Columns, cfg.Statuses)
	if err != nil {
		pool.Close()
		return nil, err
	}
	return store.New(pool, schema, store.WithOrderingOnDead(cfg.OnDead)), nil
}

// connectOne opens one plain connection for a short command that runs its
// own statements (migrate, check). application names it in
// pg_stat_activity, apart from the relay's own sessions.
func connectOne(ctx context.Context, cfg config.Config, application string) (*pgx.Conn, error) {
	cc := cfg.DB.ConnConfig.Copy()
	cc.RuntimeParams["application_name"] = application
	if cc.ConnectTimeout == 0 {
		cc.ConnectTimeout = 10 * time.Second
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}
