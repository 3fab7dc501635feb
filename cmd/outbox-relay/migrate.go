package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/config"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

func runMigrate(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	print := fs.Bool("print", false, "print the SQL instead of running it")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
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
	conn, err := pgx.ConnectConfig(cctx, cfg.DB.ConnConfig.Copy())
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	pubErr, err := store.Migrate(cctx, conn, store.Planned(cfg.Table, cfg.Columns, cfg.Statuses), cfg.Publication)
	if err != nil {
		return err
	}
	if pubErr != nil {
		fmt.Fprintf(stderr, "outbox-relay: warning: %v; the relay will run sweep-only until it exists\n", pubErr)
	}
	fmt.Fprintf(stdout, "outbox table %s is ready\n", cfg.Table)
	return nil
}
