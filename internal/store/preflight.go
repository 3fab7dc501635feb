package store

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
)

// The preflight reads: what `outbox-relay check` asks of the server beyond
// what the relay reads for itself. Each only reads; each error is the
// server's, for the caller to say what it was doing.

// Server is the server's version, role and WAL senders.
type Server struct {
	Version    string // server_version, as the server spells it
	VersionNum int    // server_version_num: 150018 for 15.18
	InRecovery bool   // a standby: read-only
	WALSenders int    // WAL sender processes running now
}

// ReadServer reads the server's version, whether it is a standby and how
// many WAL senders run.
func ReadServer(ctx context.Context, q Querier) (Server, error) {
	var s Server
	err := q.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('server_version_num')::int,
		pg_is_in_recovery(), (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')::int`).
		Scan(&s.Version, &s.VersionNum, &s.InRecovery, &s.WALSenders)
	return s, err
}

// TableAccess is what the current role may do with a table.
type TableAccess struct {
	Exists      bool
	SchemaUsage bool     // USAGE on the table's schema, without which no privilege on the table helps
	Missing     []string // the privileges asked for that the role lacks on the table
}

// ReadTableAccess reads which of privs (SELECT, UPDATE, …) the current
// role lacks on t. The table is looked up in the catalog rather than by
// name, so that a schema the role may not use reads as such, not as an
// error.
func ReadTableAccess(ctx context.Context, q Querier, t Table, privs ...string) (TableAccess, error) {
	a := TableAccess{Exists: true}
	err := q.QueryRow(ctx, `SELECT has_schema_privilege(n.oid, 'USAGE'),
		array(SELECT p FROM unnest($3::text[]) WITH ORDINALITY AS u(p, i) WHERE NOT has_table_privilege(c.oid, p) ORDER BY i)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, t.Schema, t.Name, privs).Scan(&a.SchemaUsage, &a.Missing)
	if errors.Is(err, pgx.ErrNoRows) {
		return TableAccess{}, nil
	}
	return a, err
}

// Session is a server process as pg_stat_activity shows it. Another
// role's client address reads empty without pg_read_all_stats.
type Session struct {
	PID             int32
	User            string
	ApplicationName string
	ClientAddr      string // empty for a unix socket, or when hidden
	BackendType     string // walsender for a replication connection
}

// ReadSession reads the process pid; found is false when it has ended.
func ReadSession(ctx context.Context, q Querier, pid int32) (s Session, found bool, err error) {
	s.PID = pid
	err = q.QueryRow(ctx, `SELECT coalesce(usename, ''), coalesce(application_name, ''),
		coalesce(host(client_addr), ''), coalesce(backend_type, '')
		FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&s.User, &s.ApplicationName, &s.ClientAddr, &s.BackendType)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, false, nil
	}
	return s, err == nil, err
}

// PublicationScope is what a publication publishes: its actions besides
// inserts and its tables. The zero value stands for one that does not
// exist.
type PublicationScope struct {
	Updates, Deletes, Truncates bool
	AllTables                   bool     // FOR ALL TABLES
	Tables                      []string // schema.name, sorted; at most scopeTables
}

// scopeTables bounds PublicationScope.Tables: enough to name what else a
// publication serves, without listing a whole database.
const scopeTables = 6

// ReadPublicationScope reads what publication name publishes.
func ReadPublicationScope(ctx context.Context, q Querier, name string) (PublicationScope, error) {
	var s PublicationScope
	err := q.QueryRow(ctx, `SELECT pubupdate, pubdelete, pubtruncate, puballtables,
		array(SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1 LIMIT $2)
		FROM pg_publication WHERE pubname = $1`, name, scopeTables).
		Scan(&s.Updates, &s.Deletes, &s.Truncates, &s.AllTables, &s.Tables)
	if errors.Is(err, pgx.ErrNoRows) {
		return PublicationScope{}, nil
	}
	return s, err
}

// SlotSettings are the settings, present in some PostgreSQL versions only,
// that decide what becomes of the relay's slot across a failover and
// while no one streams from it. A setting the server lacks reads empty.
type SlotSettings struct {
	SynchronizedStandbySlots string   // 17+: the standbys' slots logical walsenders wait for
	IdleSlotTimeout          string   // 18+: idle_replication_slot_timeout as SHOW prints it ("0", "1h")
	PhysicalSlots            []string // sorted; at most listedSlots: the slots standbys stream through
}

// listedSlots bounds SlotSettings.PhysicalSlots: enough to name them in a
// setting's fix.
const listedSlots = 6

// ReadSlotSettings reads the version-specific slot settings and the
// physical slots.
func ReadSlotSettings(ctx context.Context, q Querier) (SlotSettings, error) {
	var s SlotSettings
	err := q.QueryRow(ctx, `SELECT coalesce(current_setting('synchronized_standby_slots', true), ''),
		coalesce(current_setting('idle_replication_slot_timeout', true), ''),
		array(SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY 1 LIMIT $1)`, listedSlots).
		Scan(&s.SynchronizedStandbySlots, &s.IdleSlotTimeout, &s.PhysicalSlots)
	return s, err
}
