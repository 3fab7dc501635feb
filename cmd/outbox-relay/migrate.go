package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/config"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

func runMigrate(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := newFlags("migrate", stderr)
	print := fs.Bool("print", false, "print the SQL instead of running it")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	need := config.NeedDatabase
	if *print {
		need = config.NeedTable // the SQL needs no database
	}
	cfg, err := config.Load(environ, need)
	if err != nil {
		return err
	}
	if *print {
		for _, s := range store.MigrateSQL(store.Planned(cfg.Table, cfg.Columns, cfg.Statuses), cfg.Publication) {
			fmt.Fprintf(stdout, "%s;\n\n", strings.TrimSpace(s))
		}
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := connectOne(cctx, cfg, "outbox-relay-migrate")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	warning, err := migrateSchema(cctx, conn, cfg)
	if err != nil {
		return err
	}
	if warning != "" {
		fmt.Fprintf(stderr, "outbox-relay: warning: %s\n", warning)
	}
	fmt.Fprintf(stdout, "outbox table %s is ready\n", cfg.Table)
	return nil
}

// migrateSchema creates what migrate creates: the table, its indexes and
// the publication. A publication it cannot make is a warning, not a
// failure: the relay still runs, sweep-only.
func migrateSchema(ctx context.Context, conn *pgx.Conn, cfg config.Config) (warning string, err error) {
	pubErr, err := store.Migrate(ctx, conn, store.Planned(cfg.Table, cfg.Columns, cfg.Statuses), cfg.Publication)
	if err != nil {
		return "", err
	}
	if pubErr != nil {
		return fmt.Sprintf("%v; the relay will run sweep-only until it exists", pubErr), nil
	}
	return "", nil
}
