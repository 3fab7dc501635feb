package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// relayRole is the role the relays log in as: a superuser, as postgres
// is, with a name of its own.
const relayRole = "outbox_relay"

// statementsLibrary finds pg_stat_statements.so next to the server the
// cluster will run: Debian's package ships it in the server's lib
// directory, other installs say where with pg_config.
func statementsLibrary() (string, bool) {
	var dirs []string
	if bin, err := pgtest.FindBinDir(); err == nil {
		dirs = append(dirs, filepath.Join(filepath.Dir(bin), "lib"))
	}
	if o, err := exec.Command("pg_config", "--pkglibdir").Output(); err == nil {
		dirs = append(dirs, strings.TrimSpace(string(o)))
	}
	for _, d := range dirs {
		lib := filepath.Join(d, "pg_stat_statements.so")
		if _, err := os.Stat(lib); err == nil {
			return lib, true
		}
	}
	return "", false
}

// setupRelayRole creates the relays' role and, when the cluster preloads
// it, the pg_stat_statements view in the postgres database (its counts
// cover every database of the cluster).
func (b *bench) setupRelayRole(ctx context.Context, preloaded bool) error {
	b.relayUser, b.relayPassword = relayRole, rand.Text()
	// rand.Text is base32: nothing in it needs quoting.
	if _, err := b.admin.Exec(ctx, "CREATE ROLE "+pgx.Identifier{b.relayUser}.Sanitize()+
		" LOGIN SUPERUSER REPLICATION PASSWORD '"+b.relayPassword+"'"); err != nil {
		return err
	}
	if !preloaded {
		b.logf("pg_stat_statements is not installed: the relay's statements are not counted")
		return nil
	}
	if _, err := b.admin.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		b.logf("pg_stat_statements: %v; the relay's statements are not counted", err)
		return nil
	}
	b.statements = true
	return nil
}

// relayURL is dbURL with the relay's role in place of postgres.
func (b *bench) relayURL(dbURL string) string {
	u, err := url.Parse(dbURL)
	if err != nil {
		return dbURL
	}
	u.User = url.UserPassword(b.relayUser, b.relayPassword)
	return u.String()
}

// dbWork is what the relay asked of PostgreSQL while some events went
// through: its statements and the row versions written to the outbox
// table, the load's inserts included.
type dbWork struct {
	Events int `json:"events"`
	// Statements are the relay's calls as pg_stat_statements counts them
	// (BEGIN and COMMIT included); valid when StatementsCounted.
	Statements        int64 `json:"relay_statements"`
	StatementsCounted bool  `json:"statements_counted"`
	// The outbox table's n_tup_* over the same window.
	Inserted   int64 `json:"tuples_inserted"`
	Updated    int64 `json:"tuples_updated"`
	HotUpdated int64 `json:"tuples_hot_updated"`
	Deleted    int64 `json:"tuples_deleted"`
}

func (w *dbWork) perEvent(v int64) float64 { return float64(v) / float64(max(w.Events, 1)) }

// StatementsPerEvent is the relay's statements per event.
func (w *dbWork) StatementsPerEvent() float64 { return w.perEvent(w.Statements) }

// RowVersionsPerEvent is (inserted + updated + deleted) per event.
func (w *dbWork) RowVersionsPerEvent() float64 {
	return w.perEvent(w.Inserted + w.Updated + w.Deleted)
}

// workSnapshot is the counters a dbWork is the difference of; ok and
// statementsOK say which of them were read.
type workSnapshot struct {
	ins, upd, hot, del, statements int64
	ok, statementsOK               bool
}

// workNow reads the counters. The table's come from the cumulative
// statistics, which a backend publishes at most once a second and, once
// idle, up to 10 s later: so the harness's own connections are made to
// publish first, and the relay's must have exited (workAfter) for the
// figures to be complete. pg_stat_statements counts at once.
func (b *bench) workNow(ctx context.Context, db *database) workSnapshot {
	var s workSnapshot
	flushStats(ctx, db.pool)
	err := db.pool.QueryRow(ctx, `SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del
		FROM pg_stat_user_tables WHERE relid = $1::regclass`, table).Scan(&s.ins, &s.upd, &s.hot, &s.del)
	if s.ok = err == nil; err != nil {
		b.logf("read the outbox table's statistics: %v", err)
	}
	if !b.statements {
		return s
	}
	err = b.admin.QueryRow(ctx, `SELECT coalesce(sum(s.calls), 0)::int8
		FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid JOIN pg_database d ON d.oid = s.dbid
		WHERE r.rolname = $1 AND d.datname = $2`, b.relayUser, db.name).Scan(&s.statements)
	if s.statementsOK = err == nil; err != nil {
		b.logf("read pg_stat_statements: %v", err)
	}
	return s
}

// workAfter is workNow once the relay's backends have gone, having
// published their statistics on the way out: call it after the relay
// stopped.
func (b *bench) workAfter(ctx context.Context, db *database) workSnapshot {
	gone := func() (bool, error) {
		var n int
		err := b.admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = $2`, b.relayUser, db.name).Scan(&n)
		return err != nil || n == 0, nil
	}
	if ok, _ := poll(ctx, 15*time.Second, 20*time.Millisecond, gone); !ok {
		b.logf("backends of the relay still open in %s: its last row versions may be missing", db.name)
	}
	return b.workNow(ctx, db)
}

// flushStats makes every idle connection of pool publish its pending
// statistics: pg_stat_force_next_flush (PostgreSQL 15) marks them, and the
// backend publishes before it says it is ready for the next query.
func flushStats(ctx context.Context, pool *pgxpool.Pool) {
	for _, c := range pool.AcquireAllIdle(ctx) {
		_, _ = c.Exec(ctx, `SELECT pg_stat_force_next_flush()`)
		c.Release()
	}
}

// workBetween is the work done between two snapshots for events events;
// nil when the table's counters could not be read.
func workBetween(a, z workSnapshot, events int) *dbWork {
	if !a.ok || !z.ok {
		return nil
	}
	return &dbWork{Events: events, Inserted: z.ins - a.ins, Updated: z.upd - a.upd, HotUpdated: z.hot - a.hot, Deleted: z.del - a.del,
		Statements: z.statements - a.statements, StatementsCounted: a.statementsOK && z.statementsOK}
}

// logLine is the work for a progress line; empty when not measured.
func (w *dbWork) logLine() string {
	if w == nil {
		return ""
	}
	s := fmt.Sprintf("; %.2f row versions per event", w.RowVersionsPerEvent())
	if w.StatementsCounted {
		s += fmt.Sprintf(", %.2f relay statements", w.StatementsPerEvent())
	}
	return s
}

func workGoal(r *results, _ goal) target {
	t := unmeasured("statements and row versions per event at 500 events/s (stream)", "reported")
	l := r.latencyOf(streamMode.Name, 500)
	switch {
	case l == nil:
		return t
	case l.Work == nil:
		t.Verdict = "✗ (not measured)"
	case l.Work.StatementsCounted:
		t.Measured = fmt.Sprintf("%s relay statements, %s", num(l.Work.StatementsPerEvent()), versionsCell(l.Work))
		t.Verdict = "✓"
	default:
		t.Measured = versionsCell(l.Work) + "; statements not counted (no pg_stat_statements)"
		t.Verdict = "✗ (statements not counted)"
	}
	return t
}

// versionsCell is the row versions per event, split into the table's
// counters.
func versionsCell(w *dbWork) string {
	return fmt.Sprintf("%s row versions (ins %s + upd %s (HOT %s) + del %s)", num(w.RowVersionsPerEvent()),
		num(w.perEvent(w.Inserted)), num(w.perEvent(w.Updated)), num(w.perEvent(w.HotUpdated)), num(w.perEvent(w.Deleted)))
}

func workTable(r *results) string {
	var measured []latencyResult
	for _, l := range r.Latency {
		if l.Load.Committed > 0 {
			measured = append(measured, l)
		}
	}
	return mdTable("| mode | rate (events/s) | relay CPU µs/event | PostgreSQL CPU µs/event | relay statements/event | row versions/event |\n",
		"|---|--:|--:|--:|--:|---|\n",
		measured, func(l latencyResult) string {
			stmts, versions := "–", "not measured"
			if w := l.Work; w != nil {
				versions = versionsCell(w)
				if w.StatementsCounted {
					stmts = num(w.StatementsPerEvent())
				}
			}
			return fmt.Sprintf("| %s | %s | %.0f | %.0f | %s | %s |\n", l.Mode, thousands(l.Rate),
				perEventMicros(l.CPU.Relay, l.Load.Committed), perEventMicros(l.CPU.Postgres, l.Load.Committed), stmts, versions)
		})
}

// mdWork is the per-event part of the cost section.
func mdWork(b *markdown, r *results) {
	if len(r.Latency) == 0 {
		return
	}
	b.w("\n### The database's work per event\n\n")
	b.w("Per latency run: CPU per committed event (PostgreSQL's includes the load's inserts); the relay's **statements** as `pg_stat_statements` counts them for its own role, `%s` (`BEGIN` and `COMMIT` count, replication commands do not); **row versions**, the outbox table's `n_tup_ins + n_tup_upd + n_tup_del` from `pg_stat_user_tables`, the load's inserts included, read once the relay's backends have exited and published them. Statements and row versions cover the warm-up and the run, CPU the run only.\n\n", relayRole)
	b.w("%s", workTable(r))
}
