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
// name is taken by a slot of another kind, the publication is missing and
// the role may not make it, or the server refuses a replication connection
// (pg_hba.conf). The error is one short reason and
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

	if err := checkPublication(ctx, db, cfg); err != nil {
		return err
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

// checkPublication reports a publication the stream could not set up: one
// that does not publish inserts, or one that is missing (or lacks the
// table) while the role may not create (or alter) it.
func checkPublication(ctx context.Context, db *pgx.Conn, cfg Config) error {
	var exists, hasTable, inserts, canCreate bool
	var user string
	err := db.QueryRow(ctx, `SELECT
	EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1),
	EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3),
	coalesce((SELECT pubinsert FROM pg_publication WHERE pubname = $1), true),
	current_user,
	(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) OR (
		has_database_privilege(current_database(), 'CREATE') AND coalesce((
			SELECT pg_has_role(current_user, c.relowner, 'USAGE')
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $2 AND c.relname = $3), false))`,
		cfg.Publication, cfg.Schema, cfg.Table).Scan(&exists, &hasTable, &inserts, &user, &canCreate)
	switch {
	case err != nil:
		return fmt.Errorf("cannot read publication %s: %w", cfg.Publication, err)
	case !inserts:
		return fmt.Errorf("publication %s does not publish inserts (ALTER PUBLICATION %s SET (publish = 'insert'))",
			cfg.Publication, pgx.Identifier{cfg.Publication}.Sanitize())
	case exists && hasTable:
		return nil
	case canCreate:
		return nil
	case !exists:
		return fmt.Errorf("publication %s does not exist and role %s cannot create it (it needs CREATE on the database and to own %s.%s); run outbox-relay migrate as the table's owner",
			cfg.Publication, user, cfg.Schema, cfg.Table)
	default:
		return fmt.Errorf("publication %s does not include %s.%s and role %s cannot add it (it must own the table)",
			cfg.Publication, cfg.Schema, cfg.Table, user)
	}
}
