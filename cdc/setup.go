package cdc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// SQLSTATEs the stream acts on.
const (
	codeObjectInUse     = "55006" // the slot is active in another process
	codeDuplicateObject = "42710" // made a moment ago by someone else
	codeUniqueViolation = "23505" // likewise, for a catalog row
	codeUndefinedObject = "42704" // dropped a moment ago by someone else
)

// isCode reports whether err is a server error with SQLSTATE code.
func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// session prepares the publication and the slot, takes the slot and
// streams from it until the connection fails or ctx is done. streamed is
// how long it held the slot.
func (s *Stream) session(ctx context.Context, conf dbConfig, h *handoff) (streamed time.Duration, err error) {
	start, err := s.prepare(ctx, conf)
	if err != nil {
		return 0, err
	}

	cctx, cancel := context.WithTimeout(ctx, queryTimeout)
	conn, err := pgconn.ConnectConfig(cctx, conf.repl)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("replication connection: %w", err)
	}
	defer closeConn(ctx, conn)

	if start.create {
		created, err := s.createSlot(ctx, conn)
		if err != nil {
			return 0, err
		}
		start.lsn = created
	}

	sctx, cancel := context.WithTimeout(ctx, queryTimeout)
	err = pglogrepl.StartReplication(sctx, conn, s.cfg.Slot, 0, pglogrepl.StartReplicationOptions{
		Mode: pglogrepl.LogicalReplication,
		PluginArgs: []string{
			"proto_version '1'",
			"publication_names " + quoteLiteral(s.cfg.Publication),
		},
	})
	cancel()
	if err != nil {
		if isCode(err, codeObjectInUse) {
			return 0, &errStandby{}
		}
		return 0, fmt.Errorf("start replication: %w", err)
	}

	began := time.Now()
	s.streaming.Store(true)
	if s.transition(RoleStreamer, RoleStreamer, "") {
		s.log.Info("replication: streaming inserts from the slot",
			"publication", s.cfg.Publication, "table", s.cfg.Schema+"."+s.cfg.Table)
	}
	if start.lsn != 0 {
		s.setConfirmed(start.lsn)
	}
	err = s.stream(ctx, conn, h)
	s.streaming.Store(false)
	if isCode(err, codeUndefinedObject) && strings.Contains(err.Error(), "publication") {
		// The publication was dropped (and made again by the next
		// prepare). pgoutput reads it as of each change's position, so
		// this slot fails on every change from the drop to the new
		// publication, for ever: make a new slot instead.
		s.broken = true
	}
	return time.Since(began), err
}

// startPoint is where a session starts: the slot's confirmed position, or
// create when the slot has to be made first.
type startPoint struct {
	lsn    pglogrepl.LSN
	create bool
}

// prepare checks the server, ensures the publication and reads the slot on
// an ordinary connection. It returns errStandby when the slot is active in
// another process and errInRecovery on a read-only server.
func (s *Stream) prepare(ctx context.Context, conf dbConfig) (startPoint, error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	db, err := pgx.ConnectConfig(ctx, conf.sql)
	if err != nil {
		return startPoint{}, fmt.Errorf("connect: %w", err)
	}
	defer closeConn(ctx, db)

	var recovering bool
	if err := db.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&recovering); err != nil {
		return startPoint{}, fmt.Errorf("check recovery: %w", err)
	}
	if recovering {
		return startPoint{}, errInRecovery
	}
	if err := s.ensurePublication(ctx, db); err != nil {
		return startPoint{}, err
	}
	return s.readSlot(ctx, db)
}

// ensurePublication creates the insert-only publication of the outbox, or
// adds the table to a publication that lacks it.
func (s *Stream) ensurePublication(ctx context.Context, db *pgx.Conn) error {
	var exists, hasTable, inserts bool
	err := db.QueryRow(ctx, `SELECT
	EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1),
	EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3),
	coalesce((SELECT pubinsert FROM pg_publication WHERE pubname = $1), true)`,
		s.cfg.Publication, s.cfg.Schema, s.cfg.Table).Scan(&exists, &hasTable, &inserts)
	if err != nil {
		return fmt.Errorf("read publication %s: %w", s.cfg.Publication, err)
	}
	pub := pgx.Identifier{s.cfg.Publication}.Sanitize()
	table := pgx.Identifier{s.cfg.Schema, s.cfg.Table}.Sanitize()
	var sql string
	switch {
	case !inserts:
		return fmt.Errorf("publication %s does not publish inserts; alter it with publish = 'insert'", s.cfg.Publication)
	case !exists:
		sql = fmt.Sprintf(`CREATE PUBLICATION %s FOR TABLE %s WITH (publish = 'insert')`, pub, table)
	case !hasTable:
		sql = fmt.Sprintf(`ALTER PUBLICATION %s ADD TABLE %s`, pub, table)
	default:
		return nil
	}
	if _, err := db.Exec(ctx, sql); err != nil {
		// Another relay may have done it a moment ago.
		if isCode(err, codeDuplicateObject) || isCode(err, codeUniqueViolation) {
			return nil
		}
		return fmt.Errorf("publication %s: %w", s.cfg.Publication, err)
	}
	s.log.Info("replication: publication set up", "publication", s.cfg.Publication, "table", s.cfg.Schema+"."+s.cfg.Table)
	return nil
}

// readSlot reads the slot's state. A slot that was invalidated (its WAL is
// gone) is dropped so that it is made again: the sweeper covers the rows
// it would have announced.
func (s *Stream) readSlot(ctx context.Context, db *pgx.Conn) (startPoint, error) {
	var (
		active            bool
		pid               int32
		walStatus, plugin string
		slotType, dbName  string
		thisDB            string
		confirmed         pglogrepl.LSN
	)
	err := db.QueryRow(ctx, `SELECT active, coalesce(active_pid, 0), coalesce(wal_status, ''),
	coalesce(plugin, ''), slot_type, coalesce(database, ''), current_database(),
	coalesce(confirmed_flush_lsn, '0/0')::text
FROM pg_replication_slots WHERE slot_name = $1`, s.cfg.Slot).Scan(
		&active, &pid, &walStatus, &plugin, &slotType, &dbName, &thisDB, &confirmed)
	if errors.Is(err, pgx.ErrNoRows) {
		return startPoint{create: true}, nil
	}
	if err != nil {
		return startPoint{}, fmt.Errorf("read slot %s: %w", s.cfg.Slot, err)
	}
	if slotType != "logical" || plugin != "pgoutput" || dbName != thisDB {
		return startPoint{}, fmt.Errorf("slot %s exists but is not a pgoutput logical slot of database %s (%s, %s, %s); drop it or set RELAY_SLOT_NAME",
			s.cfg.Slot, thisDB, slotType, plugin, dbName)
	}
	if active {
		return startPoint{}, &errStandby{pid: pid}
	}
	if walStatus == "lost" || s.broken {
		if s.broken {
			s.log.Warn("replication slot cannot decode past the removal of its publication; recreating it, the sweeper covers the gap")
		} else {
			s.log.Warn("replication slot was invalidated (its WAL was removed); recreating it, the sweeper covers the gap")
		}
		if _, err := db.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, s.cfg.Slot); err != nil {
			switch {
			case isCode(err, codeUndefinedObject):
				// Dropped by someone else meanwhile.
			case isCode(err, codeObjectInUse):
				return startPoint{}, &errStandby{}
			default:
				return startPoint{}, fmt.Errorf("drop slot %s: %w", s.cfg.Slot, err)
			}
		}
		s.broken = false
		return startPoint{create: true}, nil
	}
	return startPoint{lsn: confirmed}, nil
}

// createSlot makes the persistent pgoutput slot and returns its consistent
// point. A slot made at the same moment by another relay makes this one a
// standby: that relay is about to stream from it.
func (s *Stream) createSlot(ctx context.Context, conn *pgconn.PgConn) (pglogrepl.LSN, error) {
	ctx, cancel := context.WithTimeout(ctx, createSlotTimeout)
	defer cancel()
	res, err := pglogrepl.CreateReplicationSlot(ctx, conn, s.cfg.Slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
		Mode:           pglogrepl.LogicalReplication,
		SnapshotAction: "NOEXPORT_SNAPSHOT",
	})
	if err != nil {
		if isCode(err, codeDuplicateObject) {
			// Another relay made it a moment ago and is about to take it.
			return 0, &errStandby{}
		}
		return 0, fmt.Errorf("create slot %s: %w", s.cfg.Slot, err)
	}
	lsn, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return 0, fmt.Errorf("create slot %s: consistent point: %w", s.cfg.Slot, err)
	}
	s.log.Info("replication: slot created", "consistent_point", res.ConsistentPoint)
	return lsn, nil
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string {
	b := make([]byte, 0, len(s)+2)
	b = append(b, '\'')
	for i := range len(s) {
		if s[i] == '\'' {
			b = append(b, '\'')
		}
		b = append(b, s[i])
	}
	return string(append(b, '\''))
}
