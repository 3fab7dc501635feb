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
	cfg, err := config.Load(environ)
	if err != nil {
		return err
	}
	table, err := tableOf(cfg)
	if err != nil {
		return err
	}
	if *print {
		for _, s := range store.MigrateSQL(table, cfg.Publication) {
			fmt.Fprintf(stdout, "%s;\n\n", strings.TrimSpace(s))
		}
		return nil
	}
	if err := cfg.Validate(false); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	pubErr, err := store.Migrate(cctx, conn, table, cfg.Publication)
	if err != nil {
		return err
	}
	if pubErr != nil {
		fmt.Fprintf(stderr, "outbox-relay: warning: %v; the relay will run sweep-only until it exists\n", pubErr)
	}
	fmt.Fprintf(stdout, "outbox table %s is ready\n", table)
	return nil
}

// tableOf parses RELAY_OUTBOX_TABLE.
func tableOf(cfg config.Config) (store.Table, error) {
	schema, name, err := config.ParseTable(cfg.OutboxTable)
	if err != nil {
		return store.Table{}, &config.Error{Var: "OUTBOX_TABLE", Msg: err.Error()}
	}
	return store.Table{Schema: schema, Name: name}, nil
}
