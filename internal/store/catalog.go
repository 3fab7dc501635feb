package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The catalog: what the server says about replication, the relay's slot and
// its publication. Each is read in one statement shape here and judged by
// its caller (cdc's checks, status, the watcher and its guard).

// SQLSTATEs the catalog statements act on.
const (
	codeDuplicateObject = "42710" // made a moment ago by someone else
	codeUniqueViolation = "23505" // likewise, for a catalog row
	codeUndefinedObject = "42704" // dropped a moment ago by someone else
)

// isCode reports whether err is a server error with SQLSTATE code.
func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// Slot describes a replication slot as Postgres sees it, with the server
// settings that judge it. The JSON keys are what `status --json` prints.
type Slot struct {
	Name               string
	Exists             bool
	Active             bool
	ActivePID          int32
	WALStatus          string // reserved, extended, unreserved, lost
	RetainedBytes      int64  // pg_current_wal_lsn() - restart_lsn
	ConfirmedLagBytes  int64  // pg_current_wal_lsn() - confirmed_flush_lsn
	MaxSlotWALKeepSize string // the server setting; -1 means unlimited
	WALLevel           string
	InRecovery         bool

	SlotType string // logical or physical
	Plugin   string // the output plugin of a logical slot
	// Database is the slot's database; CurrentDatabase the one the
	// reading connection is in.
	Database, CurrentDatabase string
	// ConfirmedFlushLSN is as Postgres writes it (0/16B3748); 0/0 when the
	// slot has confirmed nothing yet.
	ConfirmedFlushLSN string
	// InvalidationReason is why the server invalidated the slot, from
	// PostgreSQL 17 on (wal_removed; idle_timeout from 18); empty when it
	// is valid or the server does not say.
	InvalidationReason string
	// Failover is whether a standby with sync_replication_slots keeps a
	// copy of the slot (PostgreSQL 17+); nil on older servers.
	Failover *bool
}

// SlotInfo reads the slot's state. On a standby pg_current_wal_lsn fails,
// so the replay position stands in for it.
func SlotInfo(ctx context.Context, q Querier, slot string) (Slot, error) {
	sl := Slot{Name: slot}
	err := q.QueryRow(ctx, `SELECT current_setting('max_slot_wal_keep_size'), current_setting('wal_level'),
		pg_is_in_recovery(), current_database()`).
		Scan(&sl.MaxSlotWALKeepSize, &sl.WALLevel, &sl.InRecovery, &sl.CurrentDatabase)
	if err != nil {
		return sl, fmt.Errorf("slot %s: %w", slot, err)
	}
	current := "pg_current_wal_lsn()"
	if sl.InRecovery {
		current = "pg_last_wal_replay_lsn()"
	}
	// The columns of later versions are read through to_jsonb, which
	// reads a column the server lacks as NULL rather than failing.
	err = q.QueryRow(ctx, `SELECT active, coalesce(active_pid, 0), coalesce(wal_status, ''),
		coalesce(`+current+` - restart_lsn, 0)::int8, coalesce(`+current+` - confirmed_flush_lsn, 0)::int8,
		slot_type, coalesce(plugin, ''), coalesce(database, ''), coalesce(confirmed_flush_lsn, '0/0')::text,
		coalesce(to_jsonb(s) ->> 'invalidation_reason', ''), (to_jsonb(s) ->> 'failover')::bool
		FROM pg_replication_slots s WHERE slot_name = $1`, slot).
		Scan(&sl.Active, &sl.ActivePID, &sl.WALStatus, &sl.RetainedBytes, &sl.ConfirmedLagBytes,
			&sl.SlotType, &sl.Plugin, &sl.Database, &sl.ConfirmedFlushLSN, &sl.InvalidationReason, &sl.Failover)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return sl, nil
	case err != nil:
		return sl, fmt.Errorf("slot %s: %w", slot, err)
	}
	sl.Exists = true
	return sl, nil
}

// DropSlot terminates the walsender holding slot, if any, and drops it.
// The relay recreates it when it reconnects; the sweeper covers the gap.
// A stream reconnects within moments and may take the slot again between
// the two steps, so each try does both, waiting for the walsender to exit.
// A slot that does not exist is not an error.
func DropSlot(ctx context.Context, q Querier, slot string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := q.Exec(ctx, `SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots
			WHERE slot_name = $1 AND active_pid IS NOT NULL`, slot)
		if err == nil {
			err = DropIdleSlot(ctx, q, slot)
		}
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("drop slot %s: %w", slot, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// DropIdleSlot drops slot without ending the process that holds it: while
// one does, the server's error (SQLSTATE 55006, object in use) is returned
// as it is. A slot that does not exist, or is dropped meanwhile by someone
// else, is not an error.
func DropIdleSlot(ctx context.Context, q Querier, slot string) error {
	_, err := q.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, slot)
	if isCode(err, codeUndefinedObject) {
		return nil
	}
	return err
}

// ReplicationSettings are the server settings and role attributes logical
// replication depends on.
type ReplicationSettings struct {
	WALLevel     string
	User         string // current_user
	CanReplicate bool   // the role has REPLICATION or is a superuser
	MaxSlots     int    // max_replication_slots
	MaxSenders   int    // max_wal_senders
	UsedSlots    int    // slots of any kind that exist now
}

// ReadReplicationSettings reads the replication settings. Its error is the
// server's, for the caller to say what it was doing.
func ReadReplicationSettings(ctx context.Context, q Querier) (ReplicationSettings, error) {
	var st ReplicationSettings
	err := q.QueryRow(ctx, `SELECT current_setting('wal_level'), current_user,
	coalesce((SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user), false),
	current_setting('max_replication_slots')::int, current_setting('max_wal_senders')::int,
	(SELECT count(*) FROM pg_replication_slots)::int`).Scan(
		&st.WALLevel, &st.User, &st.CanReplicate, &st.MaxSlots, &st.MaxSenders, &st.UsedSlots)
	return st, err
}

// Publication describes the relay's publication and whether the current
// role could make it serve Table.
type Publication struct {
	Name  string
	Table Table

	Exists   bool
	HasTable bool // publishes Table
	// Inserts is whether it publishes inserts; true when it does not exist,
	// since the relay would make it so.
	Inserts bool
	// Changes is whether it publishes updates and deletes as well: only
	// then can the stream see that a transaction changed a row after
	// inserting it, and send rows without claiming them first.
	Changes bool
	// Alone is whether it publishes Table and nothing else, so that the
	// relay may change what it publishes.
	Alone bool
	// Identity is whether Table has a replica identity (a primary key, a
	// chosen index or FULL). Without one, a publication of its updates
	// would make every UPDATE of the table fail, the application's too.
	Identity bool
	// CanCreate is whether the role may create it for Table or add Table
	// to it: a superuser, or one with CREATE on the database that owns the
	// table (directly or through a role it belongs to).
	CanCreate bool
	User      string // current_user
}

// ReadPublication reads publication name as it stands for t. Its error is
// the server's, for the caller to say what it was doing.
func ReadPublication(ctx context.Context, q Querier, name string, t Table) (Publication, error) {
	p := Publication{Name: name, Table: t}
	err := q.QueryRow(ctx, `WITH pub AS (SELECT * FROM pg_publication WHERE pubname = $1),
rel AS (SELECT c.* FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $2 AND c.relname = $3)
SELECT
	EXISTS (SELECT 1 FROM pub),
	EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3),
	coalesce((SELECT pubinsert FROM pub), true),
	coalesce((SELECT pubupdate AND pubdelete FROM pub), false),
	coalesce((SELECT NOT puballtables FROM pub), false)
		AND (SELECT count(*) FROM pg_publication_tables WHERE pubname = $1) = 1,
	coalesce((SELECT c.relreplident = 'f' OR EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid
		AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))) FROM rel c), false),
	current_user,
	(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) OR (
		has_database_privilege(current_database(), 'CREATE') AND coalesce((
			SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM rel c), false))`,
		name, t.Schema, t.Name).Scan(&p.Exists, &p.HasTable, &p.Inserts, &p.Changes, &p.Alone, &p.Identity, &p.User, &p.CanCreate)
	return p, err
}

// EnsurePublication makes p, as read by ReadPublication, publish inserts
// into its table, and its updates and deletes where the table has a
// replica identity: it creates the publication when it is missing, adds the
// table when the publication lacks it, and adds updates and deletes to a
// publication of the table alone. It reports whether it changed anything.
// A publication or table entry made by another process a moment ago counts
// as done. It leaves alone a publication that does not publish inserts:
// that is the caller's to judge. Its error is the server's, for the caller
// to say what it was doing.
func EnsurePublication(ctx context.Context, q Querier, p Publication) (changed bool, err error) {
	var sql string
	ident := pgx.Identifier{p.Name}.Sanitize()
	switch {
	case !p.Exists:
		sql = createPublicationSQL(p.Table, p.Name, p.Identity)
	case !p.HasTable:
		sql = fmt.Sprintf(`ALTER PUBLICATION %s ADD TABLE %s`, ident, p.Table.Ident())
	case !p.Changes && p.Alone && p.Identity && p.Inserts:
		sql = fmt.Sprintf(`ALTER PUBLICATION %s SET (publish = %s)`, ident, QuoteLiteral(publishChanges))
	default:
		return false, nil
	}
	if _, err := q.Exec(ctx, sql); err != nil {
		if isCode(err, codeDuplicateObject) || isCode(err, codeUniqueViolation) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// publishChanges is what the relay's publication publishes: the stream
// needs a row's later updates and deletes in its own transaction to send
// the row as committed (cdc).
const publishChanges = "insert, update, delete"

// createPublicationSQL is the one way the relay's publication is made: the
// outbox table only, with its updates and deletes when it has a replica
// identity.
func createPublicationSQL(t Table, publication string, identity bool) string {
	publish := "insert"
	if identity {
		publish = publishChanges
	}
	return fmt.Sprintf(`CREATE PUBLICATION %s FOR TABLE %s WITH (publish = %s)`,
		pgx.Identifier{publication}.Sanitize(), t.Ident(), QuoteLiteral(publish))
}

// PublicationSQL creates the publication of table if missing, as one
// statement an operator can run by hand (migrate --print). The table it
// follows is the migrated one, whose id is its primary key.
func PublicationSQL(t Table, publication string) string {
	return fmt.Sprintf(`DO $$ BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = %s) THEN
		%s;
	END IF;
END $$`, QuoteLiteral(publication), createPublicationSQL(t, publication, true))
}

// Position is what a replication session that just took its slot reads of
// the server: its flushed WAL position, as Postgres writes it (0/16B3748),
// its clock, and whether commits wait for synchronous standbys.
type Position struct {
	LSN          string
	Clock        time.Time
	SyncStandbys bool
}

// ServerPosition reads the server's Position in one round trip.
func ServerPosition(ctx context.Context, q Querier) (Position, error) {
	var p Position
	err := q.QueryRow(ctx, `SELECT pg_current_wal_flush_lsn()::text, clock_timestamp(),
	current_setting('synchronous_standby_names') <> ''`).Scan(&p.LSN, &p.Clock, &p.SyncStandbys)
	if err != nil {
		return Position{}, fmt.Errorf("server position: %w", err)
	}
	return p, nil
}
