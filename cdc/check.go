package cdc

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/internal/store"
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

// errUnavailable is a reason logical replication cannot work on the server
// as it is configured, which only its operator can change: the stream then
// runs sweep-only and checks again now and then. Any other failure of the
// check (a connection blip, every WAL sender taken) is passing.
type errUnavailable struct{ reason error }

func (e *errUnavailable) Error() string { return e.reason.Error() }
func (e *errUnavailable) Unwrap() error { return e.reason }

// Passing refusals of a replication connection: every WAL sender or
// connection slot taken, or the server starting up or shutting down.
const (
	codeTooManyConnections = "53300"
	codeCannotConnectNow   = "57P03"
)

func check(ctx context.Context, cfg Config, conf dbConfig) error {
	db, err := pgx.ConnectConfig(ctx, conf.sql)
	if err != nil {
		return fmt.Errorf("cannot connect: %w", err)
	}
	defer closeConn(ctx, db)

	st, err := store.ReadReplicationSettings(ctx, db)
	if err != nil {
		return fmt.Errorf("cannot read the replication settings: %w", err)
	}
	slot, err := store.SlotInfo(ctx, db, cfg.Slot)
	if err != nil {
		return fmt.Errorf("cannot read replication slots: %w", err)
	}
	if err := checkSettings(st, slot, cfg); err != nil {
		return &errUnavailable{err}
	}
	pub, err := store.ReadPublication(ctx, db, cfg.Publication, cfg.table())
	if err != nil {
		return fmt.Errorf("cannot read publication %s: %w", cfg.Publication, err)
	}
	if err := checkPublication(pub); err != nil {
		return &errUnavailable{err}
	}
	return probeReplication(ctx, conf)
}

// ProbeReplication opens a replication connection as the stream does and
// runs IDENTIFY_SYSTEM, which writes nothing: a role that may replicate
// can still be refused one (pg_hba.conf needs a line for it, or every WAL
// sender is taken). The error never holds the password.
func ProbeReplication(ctx context.Context, databaseURL string) error {
	conf, err := parseConfig(databaseURL)
	if err != nil {
		return err
	}
	if err := probeReplication(ctx, conf); err != nil {
		return errors.New(redact(err, conf.sql.Password))
	}
	return nil
}

func probeReplication(ctx context.Context, conf dbConfig) error {
	cctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	rc, err := pgconn.ConnectConfig(cctx, conf.repl)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			err := fmt.Errorf("the server refuses a replication connection: %s", pgErr.Message)
			if pgErr.Code == codeTooManyConnections || pgErr.Code == codeCannotConnectNow {
				return err
			}
			return &errUnavailable{err} // pg_hba.conf or authentication
		}
		return fmt.Errorf("cannot open a replication connection: %w", err)
	}
	defer closeConn(ctx, rc)
	if _, err := pglogrepl.IdentifySystem(cctx, rc); err != nil {
		return fmt.Errorf("replication connection: %w", err)
	}
	return nil
}

// checkSettings reports a server or slot logical replication cannot work
// with: wal_level not logical, a role that may not replicate, no WAL
// sender, the slot name taken by a slot of another kind, or no free slot.
func checkSettings(st store.ReplicationSettings, slot store.Slot, cfg Config) error {
	switch {
	case st.WALLevel != "logical":
		return fmt.Errorf("wal_level is %s; logical replication needs wal_level = logical (and a server restart)", st.WALLevel)
	case !st.CanReplicate:
		return fmt.Errorf("role %s has neither the REPLICATION attribute nor superuser (ALTER ROLE %s REPLICATION)", st.User, pgx.Identifier{st.User}.Sanitize())
	case st.MaxSenders == 0:
		return errors.New("max_wal_senders is 0; logical replication needs at least one WAL sender")
	case slot.Exists && !SlotFits(slot):
		return fmt.Errorf("replication slot %s exists but is not a pgoutput logical slot of this database (%s, %s, %s); drop it or choose another RELAY_SLOT_NAME",
			cfg.Slot, slot.SlotType, slot.Plugin, slot.Database)
	case !slot.Exists && st.UsedSlots >= st.MaxSlots:
		return fmt.Errorf("no free replication slot for %s: max_replication_slots = %d and %d are in use", cfg.Slot, st.MaxSlots, st.UsedSlots)
	}
	return nil
}

// checkPublication reports a publication the stream could not set up: one
// that does not publish inserts, or one that is missing (or lacks the
// table) while the role may not create (or alter) it.
func checkPublication(p store.Publication) error {
	switch {
	case !p.Inserts:
		return fmt.Errorf("publication %s does not publish inserts (ALTER PUBLICATION %s SET (publish = 'insert'))",
			p.Name, pgx.Identifier{p.Name}.Sanitize())
	case p.Exists && p.HasTable:
		return nil
	case p.CanCreate:
		return nil
	case !p.Exists:
		return fmt.Errorf("publication %s does not exist and role %s cannot create it (it needs CREATE on the database and to own %s.%s); run outbox-relay migrate as the table's owner",
			p.Name, p.User, p.Table.Schema, p.Table.Name)
	default:
		return fmt.Errorf("publication %s does not include %s.%s and role %s cannot add it (it must own the table)",
			p.Name, p.Table.Schema, p.Table.Name, p.User)
	}
}
