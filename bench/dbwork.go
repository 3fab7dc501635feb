package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
	// Top are the relay's busiest statements, by calls.
	Top []statementUse `json:"top_statements,omitempty"`
}

// statementUse is one normalised statement of the relay and how often it
// ran.
type statementUse struct {
	Query string `json:"query"`
	Calls int64  `json:"calls"`
	Rows  int64  `json:"rows"`
}

// topStatements is how many statements a dbWork keeps.
const topStatements = 8

func (w *dbWork) perEvent(v int64) float64 { return float64(v) / float64(max(w.Events, 1)) }

// StatementsPerEvent is the relay's statements per event.
func (w *dbWork) StatementsPerEvent() float64 { return w.perEvent(w.Statements) }

// RowVersionsPerEvent is (inserted + updated + deleted) per event.
func (w *dbWork) RowVersionsPerEvent() float64 {
	return w.perEvent(w.Inserted + w.Updated + w.Deleted)
}

// workSnapshot is the counters a dbWork is the difference of.
type workSnapshot struct {
	ok                 bool // the table's counters were read
	ins, upd, hot, del int64
	statements         map[int64]statementUse // by queryid
	statementsOK       bool
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
	if err != nil {
		b.logf("read the outbox table's statistics: %v", err)
	}
	s.ok = err == nil
	if !b.statements {
		return s
	}
	rows, err := b.admin.Query(ctx, `SELECT coalesce(s.queryid, 0), s.calls, s.rows, s.query
		FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid JOIN pg_database d ON d.oid = s.dbid
		WHERE r.rolname = $1 AND d.datname = $2`, b.relayUser, db.name)
	if err == nil {
		s.statements = map[int64]statementUse{}
		var id int64
		var u statementUse
		_, err = pgx.ForEachRow(rows, []any{&id, &u.Calls, &u.Rows, &u.Query}, func() error {
			prev := s.statements[id] // top-level and nested entries share a queryid
			s.statements[id] = statementUse{Query: u.Query, Calls: prev.Calls + u.Calls, Rows: prev.Rows + u.Rows}
			return nil
		})
	}
	if err != nil {
		b.logf("read pg_stat_statements: %v", err)
	}
	s.statementsOK = err == nil
	return s
}

// workAfter is workNow once the relay's backends have gone, having
// published their statistics on the way out: call it after the relay
// stopped.
func (b *bench) workAfter(ctx context.Context, db *database) workSnapshot {
	deadline := time.Now().Add(15 * time.Second)
	for {
		var n int
		err := b.admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = $2`, b.relayUser, db.name).Scan(&n)
		if err != nil || n == 0 {
			break
		}
		if time.Now().After(deadline) || sleep(ctx, 20*time.Millisecond) != nil {
			b.logf("%d backends of the relay still open in %s: its last row versions may be missing", n, db.name)
			break
		}
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
	w := &dbWork{Events: events, Inserted: z.ins - a.ins, Updated: z.upd - a.upd, HotUpdated: z.hot - a.hot, Deleted: z.del - a.del}
	if !a.statementsOK || !z.statementsOK {
		return w
	}
	w.StatementsCounted = true
	for id, u := range z.statements {
		d := statementUse{Query: u.Query, Calls: u.Calls - a.statements[id].Calls, Rows: u.Rows - a.statements[id].Rows}
		if d.Calls <= 0 {
			continue
		}
		w.Statements += d.Calls
		d.Query = shortQuery(d.Query)
		w.Top = append(w.Top, d)
	}
	slices.SortFunc(w.Top, func(x, y statementUse) int { return cmp.Compare(y.Calls, x.Calls) })
	w.Top = w.Top[:min(len(w.Top), topStatements)]
	return w
}

// shortQuery is a statement on one line, cut to a length a table holds.
func shortQuery(q string) string {
	q = strings.Join(strings.Fields(q), " ")
	if r := []rune(q); len(r) > 160 {
		q = string(r[:159]) + "…"
	}
	return q
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
	if l == nil {
		return t
	}
	if w := l.Work; w != nil {
		t.Measured = fmt.Sprintf("%s row versions (%s)", num(w.RowVersionsPerEvent()), versionsCell(w))
		t.Verdict = "✓"
		if w.StatementsCounted {
			t.Measured = fmt.Sprintf("%s relay statements, ", num(w.StatementsPerEvent())) + t.Measured
		} else {
			t.Measured += "; statements not counted (no pg_stat_statements)"
			t.Verdict = "✗ (statements not counted)"
		}
	} else {
		t.Verdict = "✗ (not measured)"
	}
	return t
}

// versionsCell splits row versions per event into the table's counters.
func versionsCell(w *dbWork) string {
	return fmt.Sprintf("ins %s + upd %s (HOT %s) + del %s",
		num(w.perEvent(w.Inserted)), num(w.perEvent(w.Updated)), num(w.perEvent(w.HotUpdated)), num(w.perEvent(w.Deleted)))
}

// workRow is one line of the per-event table.
type workRow struct {
	measure, mode, load string
	events              int     // the CPU's events
	relay, postgres     float64 // CPU seconds
	work                *dbWork
}

func (r *results) workRows() []workRow {
	var rows []workRow
	for _, l := range r.Latency {
		if l.Skipped == "" && l.Load.Committed > 0 {
			rows = append(rows, workRow{"latency", l.Mode, thousands(l.Rate) + " events/s", l.Load.Committed, l.CPU.Relay, l.CPU.Postgres, l.Work})
		}
	}
	for _, t := range r.Throughput {
		if t.Skipped == "" && t.Events > 0 {
			rows = append(rows, workRow{"throughput", t.Mode, t.Load, t.Events, t.CPU.Relay, t.CPU.Postgres, t.Work})
		}
	}
	if u := r.burstMeasured(); u != nil {
		row := workRow{measure: "burst", mode: streamMode.Name, load: fmt.Sprintf("%s, %d runs", load{kind: "single", n: u.Events}, len(u.Runs)), work: u.Work}
		for _, x := range u.Runs {
			row.events += x.Load.Committed
			row.relay += x.CPU.Relay
			row.postgres += x.CPU.Postgres
		}
		rows = append(rows, row)
	}
	return rows
}

func workTable(r *results) string {
	return mdTable("| measure | mode | load | relay CPU µs/event | PostgreSQL CPU µs/event | relay statements/event | row versions/event | of which per event |\n",
		"|---|---|---|--:|--:|--:|--:|---|\n",
		r.workRows(), func(x workRow) string {
			stmts, versions, split := "–", "–", "not measured"
			if w := x.work; w != nil {
				versions, split = num(w.RowVersionsPerEvent()), versionsCell(w)
				if w.StatementsCounted {
					stmts = num(w.StatementsPerEvent())
				}
			}
			return fmt.Sprintf("| %s | %s | %s | %.0f | %.0f | %s | %s | %s |\n", x.measure, x.mode, x.load,
				perEventMicros(x.relay, x.events), perEventMicros(x.postgres, x.events), stmts, versions, split)
		})
}

// statementsTable is the relay's busiest statements at one latency rate,
// in both modes.
func statementsTable(r *results, rate int) string {
	var b strings.Builder
	for _, m := range modes() {
		l := r.latencyOf(m.Name, rate)
		if l == nil || l.Work == nil || !l.Work.StatementsCounted || len(l.Work.Top) == 0 {
			continue
		}
		if b.Len() == 0 {
			b.WriteString("| mode | calls/event | rows/call | statement (normalised by pg_stat_statements) |\n|---|--:|--:|---|\n")
		}
		for _, s := range l.Work.Top {
			fmt.Fprintf(&b, "| %s | %s | %s | `%s` |\n", m.Name, num(l.Work.perEvent(s.Calls)), num(float64(s.Rows)/float64(max(s.Calls, 1))),
				strings.ReplaceAll(s.Query, "|", `\|`))
		}
	}
	return b.String()
}

// mdWork is the per-event part of the cost section.
func mdWork(b *markdown, r *results) {
	b.w("\n### The database's work per event\n\n")
	b.w("What each event cost, in CPU and in the statements and row versions the relay asked of PostgreSQL. CPU per event is the CPU of the latency or throughput table over its committed events (PostgreSQL's includes the load's inserts). **Statements** are the relay's calls as `pg_stat_statements` counts them (the cluster preloads it): the relay logs in as a role of its own, `%s` (a superuser, as `postgres` is), so its statements are told from the load's inserts and the harness's queries by role and database; `BEGIN` and `COMMIT` count, the stream's replication commands do not. **Row versions** are the outbox table's `n_tup_ins + n_tup_upd + n_tup_del` from `pg_stat_user_tables`, the load's inserts (one per event) included; a backend publishes these counts at most once a second and, once idle, up to 10 s later, so they are read after the relay's backends have exited and after the harness's connections were made to publish (`pg_stat_force_next_flush()`). Each latency rate has a relay of its own for that reason; its statements and row versions cover the warm-up and the run (both at that rate), its CPU the run only. The burst's cover all its runs.\n\n", relayRole)
	b.w("%s", workTable(r))
	if t := statementsTable(r, 500); t != "" {
		b.w("\nThe relay's busiest statements at 500 events/s, per event, over the warm-up and the run:\n\n%s", t)
	}
}
