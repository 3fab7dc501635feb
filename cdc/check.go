package cdc

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Check reports why logical replication cannot be used with cfg, or nil
// when it can: wal_level is not logical, the role has neither REPLICATION
// nor superuser, no replication slot or WAL sender is available, the slot
// name is taken by a slot of another kind, or the server refuses a
// replication connection (pg_hba.conf). The error is one short reason and
// never holds the password.
func Check(ctx context.Context, cfg Config) error {
	conf, err := parseConfig(cfg.DatabaseURL)
	if err != nil {
		return err
	}
	if err := check(ctx, cfg, conf); err != nil {
		return errors.New(redact(err, conf.sql.Password))
	}
	return nil
}

func check(ctx context.Context, cfg Config, conf dbConfig) error {
	db, err := pgx.ConnectConfig(ctx, conf.sql)
	if err != nil {
		return fmt.Errorf("cannot connect: %w", err)
	}
	defer closeConn(ctx, db)

	var (
		walLevel, user           string
		canReplicate             bool
		maxSlots, maxSenders     int
		usedSlots                int
		slotExists, slotFits     bool
		slotType, plugin, slotDB string
	)
	err = db.QueryRow(ctx, `SELECT current_setting('wal_level'), current_user,
	coalesce((SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user), false),
	current_setting('max_replication_slots')::int, current_setting('max_wal_senders')::int,
	(SELECT count(*) FROM pg_replication_slots)::int`).Scan(
		&walLevel, &user, &canReplicate, &maxSlots, &maxSenders, &usedSlots)
	if err != nil {
		return fmt.Errorf("cannot read the replication settings: %w", err)
	}
	err = db.QueryRow(ctx, `SELECT slot_type, coalesce(plugin, ''), coalesce(database, ''),
	slot_type = 'logical' AND plugin = 'pgoutput' AND database = current_database()
FROM pg_replication_slots WHERE slot_name = $1`, cfg.Slot).Scan(&slotType, &plugin, &slotDB, &slotFits)
	switch {
	case err == nil:
		slotExists = true
	case !errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("cannot read replication slots: %w", err)
	}

	switch {
	case walLevel != "logical":
		return fmt.Errorf("wal_level is %s; logical replication needs wal_level = logical (and a server restart)", walLevel)
	case !canReplicate:
		return fmt.Errorf("role %s has neither the REPLICATION attribute nor superuser (ALTER ROLE %s REPLICATION)", user, pgx.Identifier{user}.Sanitize())
	case maxSenders == 0:
		return errors.New("max_wal_senders is 0; logical replication needs at least one WAL sender")
	case slotExists && !slotFits:
		return fmt.Errorf("replication slot %s exists but is not a pgoutput logical slot of this database (%s, %s, %s); drop it or choose another RELAY_SLOT_NAME",
			cfg.Slot, slotType, plugin, slotDB)
	case !slotExists && usedSlots >= maxSlots:
		return fmt.Errorf("no free replication slot for %s: max_replication_slots = %d and %d are in use", cfg.Slot, maxSlots, usedSlots)
	}

	// A replication connection may still be refused (pg_hba.conf needs a
	// line for it, or every WAL sender is taken): try one.
	cctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	rc, err := pgconn.ConnectConfig(cctx, conf.repl)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return fmt.Errorf("the server refuses a replication connection: %s", pgErr.Message)
		}
		return fmt.Errorf("cannot open a replication connection: %w", err)
	}
	defer closeConn(ctx, rc)
	if _, err := pglogrepl.IdentifySystem(cctx, rc); err != nil {
		return fmt.Errorf("replication connection: %w", err)
	}
	return nil
}
