package cdc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// SQLSTATEs the stream acts on.
const (
	codeObjectInUse     = "55006" // the slot is active in another process
	codeDuplicateObject = "42710" // made a moment ago by someone else
	codeUndefinedObject = "42704" // dropped a moment ago by someone else

	codeNotInPrerequisiteState = "55000" // with pgoutput's routine: a publication skipped
)

// publicationSkipped reports whether err is pgoutput's warning, from
// PostgreSQL 18 on, that it skipped a change because the publication did
// not exist at that point of the WAL. Its SQLSTATE (55000, object not in
// prerequisite state) is a general one: the routine that raises it, which
// no lc_messages translates, says which warning it is.
func publicationSkipped(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.SeverityUnlocalized == "WARNING" &&
		pgErr.Code == codeNotInPrerequisiteState && pgErr.Routine == "LoadPublications"
}

// isCode reports whether err is a server error with SQLSTATE code.
func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// session prepares the publication and the slot, takes the slot and
// streams from it until the connection fails or ctx is done. streamed is
// how long it held the slot.
func (s *Stream) session(ctx context.Context, conf dbConfig, h *handoff) (streamed time.Duration, err error) {
	cctx, cancel := context.WithTimeout(ctx, queryTimeout)
	db, err := pgx.ConnectConfig(cctx, conf.sql)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("connect: %w", err)
	}
	// Kept open until the slot is taken: the horizon is read on it then,
	// one round trip after START_REPLICATION.
	closeDB := sync.OnceFunc(func() { closeConn(ctx, db) })
	defer closeDB()
	start, err := s.prepare(ctx, db)
	if err != nil {
		return 0, err
	}

	cctx, cancel = context.WithTimeout(ctx, queryTimeout)
	conn, err := pgconn.ConnectConfig(cctx, conf.repl)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("replication connection: %w", err)
	}
	defer closeConn(ctx, conn)

	if start.lsn, err = s.begin(ctx, conn, start); err != nil {
		return 0, err
	}

	sess, err := s.take(ctx, conn, db, start)
	if err != nil {
		return 0, err
	}
	closeDB()
	began := time.Now()
	s.streaming.Store(true)
	s.streamsAfterSwitch()
	if s.transition(RoleStreamer, RoleStreamer, "") {
		s.log.Info("replication: streaming inserts from the slot",
			"publication", s.cfg.Publication, "table", s.cfg.Schema+"."+s.cfg.Table)
	}
	if start.lsn != 0 {
		s.setConfirmed(start.lsn)
	}
	err = s.stream(ctx, conn, h, sess)
	s.streaming.Store(false)
	if isCode(err, codeUndefinedObject) || publicationSkipped(err) {
		// The publication was dropped (and made again by the next
		// prepare). pgoutput reads it as of each change's position, so
		// up to PostgreSQL 17 this slot fails on every change from the
		// drop to the new publication, for ever; from 18 on it skips
		// those changes with a warning and never says the publication is
		// gone. Either way make a new slot: the sweeper covers the rows
		// of the gap. Once streaming, the publication is the only object
		// the walsender looks up by name, so the SQLSTATE says it,
		// whatever the language of the server's messages (lc_messages).
		s.broken = true
	}
	return time.Since(began), err
}

// take starts replication from the slot and, when rows are decoded whole,
// reads the session's start on db right after. It returns errStandby when
// another process holds the slot.
func (s *Stream) take(ctx context.Context, conn *pgconn.PgConn, db *pgx.Conn, start startPoint) (sessionStart, error) {
	sctx, cancel := context.WithTimeout(ctx, queryTimeout)
	err := pglogrepl.StartReplication(sctx, conn, s.cfg.Slot, 0, pglogrepl.StartReplicationOptions{
		Mode:       pglogrepl.LogicalReplication,
		PluginArgs: s.pluginArgs(),
	})
	cancel()
	if err != nil {
		if isCode(err, codeObjectInUse) {
			return sessionStart{}, &errStandby{}
		}
		return sessionStart{}, fmt.Errorf("start replication: %w", err)
	}
	if s.cfg.Outbox == nil {
		return sessionStart{}, nil
	}
	sess, err := s.horizon(ctx, db)
	sess.changes = start.changes
	return sess, err
}

// pluginArgs are the options of pgoutput for a session on s.server.
func (s *Stream) pluginArgs() []string {
	args := []string{
		"proto_version '1'",
		// pgoutput splits the list as SQL identifiers and folds unquoted
		// ones to lower case: quote the name so that PortalEvents stays
		// PortalEvents.
		"publication_names " + store.QuoteLiteral(pgx.Identifier{s.cfg.Publication}.Sanitize()),
	}
	if s.cfg.SkipOrigins && s.server.version >= 16 {
		args = append(args, "origin 'none'")
	}
	return args
}

// sessionStart is what a session knows from the moment it took the slot.
type sessionStart struct {
	// horizon is the server's flushed WAL position once the slot was
	// taken. An earlier session, of this process or another, can only
	// have received transactions that committed before it: those are
	// replays, which may have been announced and sent already. Later ones
	// reach this session first.
	horizon pglogrepl.LSN
	// offset is the server's clock minus this host's, to the round trip.
	offset time.Duration
	// claimFirst: rows are claimed before they are sent, none sent from
	// the tuple alone. So on a server whose commits wait for synchronous
	// standbys: the walsender sends a commit as soon as it is flushed
	// locally, before the standby has it and before it is visible, and a
	// row sent then could be lost in a failover that the application's
	// commit never returned from. A claim sees the row only once visible.
	claimFirst bool
	// changes: the publication carries updates and deletes, so the stream
	// sees a row changed later in its own transaction. Without them no
	// row is sent from its tuple.
	changes bool
}

// horizon reads the session's start once START_REPLICATION has taken the
// slot (the stream's connection is busy streaming from then on).
//
// Rows committed between START_REPLICATION and this read count as replays
// too: they wait for the sweeper's grace, a session start being rare.
func (s *Stream) horizon(ctx context.Context, db *pgx.Conn) (sessionStart, error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	sent := time.Now()
	pos, err := store.ServerPosition(ctx, db)
	if err != nil {
		return sessionStart{}, err
	}
	back := time.Now()
	lsn, err := pglogrepl.ParseLSN(pos.LSN)
	if err != nil {
		return sessionStart{}, fmt.Errorf("server position %q: %w", pos.LSN, err)
	}
	mid := sent.Add(back.Sub(sent) / 2)
	return sessionStart{horizon: lsn, offset: pos.Clock.Sub(mid), claimFirst: pos.SyncStandbys}, nil
}

// server is the server a session streams from, as IDENTIFY_SYSTEM and the
// connection tell it.
type server struct {
	systemID string
	timeline int32
	host     string // address:port
	version  int    // major version, e.g. 17
}

// identify reads which server the replication connection reached. A system
// identifier or timeline other than the last session's means a failover
// (a promoted standby keeps the system identifier, on a new timeline) or
// another database altogether: announcements the switch cut are in the
// table only, so the sweeper is woken to sweep at once.
func (s *Stream) identify(ctx context.Context, conn *pgconn.PgConn) error {
	ictx, cancel := context.WithTimeout(ctx, queryTimeout)
	sys, err := pglogrepl.IdentifySystem(ictx, conn)
	cancel()
	if err != nil {
		return fmt.Errorf("identify system: %w", err)
	}
	now := server{systemID: sys.SystemID, timeline: sys.Timeline, version: store.MajorVersion(conn.ParameterStatus("server_version"))}
	if c := conn.Conn(); c != nil {
		now.host = c.RemoteAddr().String()
	}
	was := s.server
	s.server = now
	switch {
	case was.systemID == "":
		s.log.Info("replication: following server", "system_id", now.systemID, "timeline", now.timeline,
			"host", now.host, "server_version", now.version)
	case was.systemID != now.systemID || was.timeline != now.timeline:
		s.log.Warn("replication: now following another server (a failover?); sweeping at once",
			"system_id", now.systemID, "timeline", now.timeline, "host", now.host,
			"previous_system_id", was.systemID, "previous_timeline", was.timeline, "previous_host", was.host)
		signal(s.wake)
		s.afterSwitch = true
	}
	return nil
}

// begin identifies the server on the replication connection and makes the
// slot when it must be made, returning where the session starts.
func (s *Stream) begin(ctx context.Context, conn *pgconn.PgConn, start startPoint) (pglogrepl.LSN, error) {
	if err := s.identify(ctx, conn); err != nil {
		return 0, err
	}
	if !start.create {
		return start.lsn, nil
	}
	return s.createSlot(ctx, conn)
}

// streamsAfterSwitch wakes the sweeper again when the stream has begun to
// stream from a server it switched to: rows committed there before the new
// slot's start will never be announced.
func (s *Stream) streamsAfterSwitch() {
	if s.afterSwitch {
		s.afterSwitch = false
		signal(s.wake)
	}
}

// startPoint is where a session starts: the slot's confirmed position, or
// create when the slot has to be made first (and drop when the one there
// must go before).
type startPoint struct {
	lsn          pglogrepl.LSN
	create, drop bool
	changes      bool // the publication carries updates and deletes
}

// prepare reads the server and the slot, ensures the publication and drops
// a slot that must be made again, on an ordinary connection. It returns
// errStandby when the slot is active in another process and errInRecovery
// on a read-only server.
func (s *Stream) prepare(ctx context.Context, db *pgx.Conn) (startPoint, error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()

	slot, err := store.SlotInfo(ctx, db, s.cfg.Slot)
	if err != nil {
		return startPoint{}, fmt.Errorf("read %w", err) // read slot <name>: …
	}
	if slot.InRecovery {
		return startPoint{}, errInRecovery
	}
	changes, err := s.ensurePublication(ctx, db)
	if err != nil {
		return startPoint{}, err
	}
	start, err := startFrom(slot, s.broken)
	start.changes = changes
	if err != nil || !start.drop {
		return start, err
	}
	if s.broken {
		s.log.Warn("replication slot lost its publication (dropped while the slot was in use); recreating both, the sweeper covers the gap")
	} else {
		s.log.Warn("replication slot was invalidated; recreating it, the sweeper covers the gap", "reason", invalidationReason(slot))
	}
	if err := store.DropIdleSlot(ctx, db, s.cfg.Slot); err != nil {
		if isCode(err, codeObjectInUse) {
			return startPoint{}, &errStandby{}
		}
		return startPoint{}, fmt.Errorf("drop slot %s: %w", s.cfg.Slot, err)
	}
	s.broken = false
	return start, nil
}

// invalidationReason is why the server invalidated slot: as it says from
// PostgreSQL 17 on; before, a primary invalidates a slot only when its WAL
// is removed (max_slot_wal_keep_size).
func invalidationReason(slot store.Slot) string {
	if slot.InvalidationReason != "" {
		return slot.InvalidationReason
	}
	return "wal_removed"
}

// startFrom decides where a session starts from the slot's state and
// whether the stream found it broken. A slot that was invalidated (its WAL
// is gone) or broken is dropped and made again: the sweeper covers the
// rows it would have announced.
func startFrom(slot store.Slot, broken bool) (startPoint, error) {
	switch {
	case !slot.Exists:
		return startPoint{create: true}, nil
	case !SlotFits(slot):
		return startPoint{}, fmt.Errorf("slot %s exists but is not a pgoutput logical slot of database %s (%s, %s, %s); drop it or set RELAY_SLOT_NAME",
			slot.Name, slot.CurrentDatabase, slot.SlotType, slot.Plugin, slot.Database)
	case slot.Active:
		return startPoint{}, &errStandby{pid: slot.ActivePID}
	case slot.WALStatus == "lost" || broken:
		return startPoint{create: true, drop: true}, nil
	}
	lsn, err := pglogrepl.ParseLSN(slot.ConfirmedFlushLSN)
	if err != nil {
		return startPoint{}, fmt.Errorf("slot %s: confirmed_flush_lsn: %w", slot.Name, err)
	}
	return startPoint{lsn: lsn}, nil
}

// SlotFits reports whether an existing slot is one the stream can use: a
// pgoutput logical slot of the database it connects to.
func SlotFits(slot store.Slot) bool {
	return slot.SlotType == "logical" && slot.Plugin == "pgoutput" && slot.Database == slot.CurrentDatabase
}

// createSlot makes the persistent pgoutput slot and returns its consistent
// point. A slot made at the same moment by another relay makes this one a
// standby: that relay is about to stream from it.
func (s *Stream) createSlot(ctx context.Context, conn *pgconn.PgConn) (pglogrepl.LSN, error) {
	ctx, cancel := context.WithTimeout(ctx, createSlotTimeout)
	defer cancel()
	var res pglogrepl.CreateReplicationSlotResult
	var err error
	if s.server.version >= 17 {
		// pglogrepl has no FAILOVER option: the command is written here.
		res, err = pglogrepl.ParseCreateReplicationSlot(conn.Exec(ctx, failoverSlotCommand(s.cfg.Slot)))
	} else {
		res, err = pglogrepl.CreateReplicationSlot(ctx, conn, s.cfg.Slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
			Mode:           pglogrepl.LogicalReplication,
			SnapshotAction: "NOEXPORT_SNAPSHOT",
		})
	}
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
	s.log.Info("replication: slot created", "consistent_point", res.ConsistentPoint, "failover", s.server.version >= 17)
	return lsn, nil
}

// failoverSlotCommand creates the slot on PostgreSQL 17 and newer with
// FAILOVER, so that a standby with sync_replication_slots = on keeps a copy
// of it and a promotion does not lose it: the stream goes on from where it
// was rather than from a new slot's start. SNAPSHOT 'nothing' is
// NOEXPORT_SNAPSHOT in the option syntax. The slot name is a validated
// identifier, as pglogrepl writes it too.
func failoverSlotCommand(slot string) string {
	return "CREATE_REPLICATION_SLOT " + slot + " LOGICAL pgoutput (SNAPSHOT 'nothing', FAILOVER)"
}

// table is the outbox table as store names it.
func (c Config) table() store.Table { return store.Table{Schema: c.Schema, Name: c.Table} }
