package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/cdc"
	"github.com/outbox-relay/outbox-relay/internal/config"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// The items of the database: the server, the role's privileges on the
// table and the table; the replication items are the verdicts of cdc's
// readiness rules.

// checker holds what the items are judged from, each read once.
type checker struct {
	cfg   config.Config
	conn  *pgx.Conn
	cdc   cdc.Config
	facts cdc.Facts
}

func newChecker(cfg config.Config, conn *pgx.Conn) *checker {
	return &checker{cfg: cfg, conn: conn, cdc: cdcConfig(cfg, nil)}
}

// read reads the facts; the replication connection is tried only when the
// relay would stream.
func (c *checker) read(ctx context.Context) {
	c.facts = cdc.ReadFacts(ctx, c.conn, c.cdc)
	if c.cfg.CDC != "off" {
		c.facts.Probe(ctx, c.cdc)
	}
}

// items judges every item, in the order the report lists them: the
// replication rules of the server and the role before the table, those of
// its publication and slot after.
func (c *checker) items(ctx context.Context) []checkItem {
	items := []checkItem{c.serverItem()}
	var settings, objects []checkItem
	if c.cfg.CDC == "off" {
		settings = []checkItem{{Name: "replication", Status: checkSkip,
			Detail: "not checked: RELAY_CDC=off, the relay delivers sweep-only"}}
	} else {
		for _, v := range cdc.Judge(c.facts, c.cdc) {
			it := checkItem{Name: v.Item, Status: v.Status, Detail: v.Detail, Fix: v.Fix, replication: true}
			if v.Objects {
				objects = append(objects, it)
			} else {
				settings = append(settings, it)
			}
		}
	}
	items = append(items, settings...)
	items = append(items, c.privilegesItem(ctx), c.tableItem(ctx))
	items = append(items, objects...)
	return append(items, probeRunner(ctx, c.cfg.RunnerURL))
}

// unreadable is an item whose facts could not be read. A server error
// is quoted; the connection's errors never hold the password.
func unreadable(name, what string, err error) checkItem {
	return checkItem{Name: name, Status: checkUnknown, Detail: fmt.Sprintf("cannot read %s: %v", what, err)}
}

func (c *checker) serverItem() checkItem {
	s := c.facts.Server
	switch {
	case c.facts.ServerErr != nil:
		return unreadable("server", "the server version", c.facts.ServerErr)
	case s.InRecovery:
		return checkItem{Name: "server", Status: checkFail,
			Detail: fmt.Sprintf("PostgreSQL %s is a standby (read-only): the relay updates rows", s.Version),
			Fix:    "point RELAY_DATABASE_URL at the primary"}
	case s.VersionNum < 130000:
		return checkItem{Name: "server", Status: checkFail,
			Detail: fmt.Sprintf("PostgreSQL %s: the relay needs 13 or later (wal_status, max_slot_wal_keep_size)", s.Version),
			Fix:    "upgrade PostgreSQL"}
	case s.VersionNum < 140000:
		return checkItem{Name: "server", Status: checkWarn,
			Detail: fmt.Sprintf("PostgreSQL %s: the slot guard needs 14 or later to end a walsender (pg_terminate_backend with a timeout)", s.Version),
			Fix:    "upgrade PostgreSQL, or rely on max_slot_wal_keep_size alone"}
	}
	return checkItem{Name: "server", Status: checkOK, Detail: fmt.Sprintf("PostgreSQL %s, primary", s.Version)}
}

// requiredPrivileges are what the relay does to the table: it reads and
// updates rows, and deletes delivered ones when retention is on.
func (c *checker) requiredPrivileges() []string {
	p := []string{"SELECT", "UPDATE"}
	if c.cfg.Retention > 0 {
		p = append(p, "DELETE")
	}
	return p
}

func (c *checker) privilegesItem(ctx context.Context) checkItem {
	it := checkItem{Name: "privileges"}
	privs := c.requiredPrivileges()
	a, err := store.ReadTableAccess(ctx, c.conn, c.cfg.Table, privs...)
	user := c.facts.Settings.User
	if user == "" {
		user = "the role" // its name could not be read
	}
	grant := fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s; GRANT %s ON %s TO %s (see deploy/sql/least-privilege.sql)",
		pgx.Identifier{c.cfg.Table.Schema}.Sanitize(), pgx.Identifier{user}.Sanitize(), strings.Join(privs, ", "), c.cfg.Table.Ident(), pgx.Identifier{user}.Sanitize())
	switch {
	case err != nil:
		return unreadable(it.Name, "the table's privileges", err)
	case !a.Exists:
		it.Status, it.Detail = checkSkip, fmt.Sprintf("not checked: %s does not exist", c.cfg.Table)
	case !a.SchemaUsage || len(a.Missing) > 0:
		missing := a.Missing
		if !a.SchemaUsage {
			missing = append([]string{"USAGE on schema " + c.cfg.Table.Schema}, missing...)
		}
		it.Status, it.Fix = checkFail, grant
		it.Detail = fmt.Sprintf("%s lacks %s on %s", user, strings.Join(missing, ", "), c.cfg.Table)
		if c.cfg.Retention > 0 && slices.Contains(a.Missing, "DELETE") {
			it.Detail += fmt.Sprintf(" (DELETE: RELAY_RETENTION=%s deletes delivered rows; 0 keeps them)", c.cfg.Retention)
		}
	default:
		it.Status = checkOK
		it.Detail = fmt.Sprintf("%s has %s on %s", user, strings.Join(privs, ", "), c.cfg.Table)
	}
	return it
}

// inspectTable is the check of the table that run makes at start-up.
func inspectTable(ctx context.Context, q store.Querier, cfg config.Config) error {
	_, err := store.Inspect(ctx, q, cfg.Table, cfg.Columns, cfg.Statuses)
	return err
}

func (c *checker) tableItem(ctx context.Context) checkItem {
	it := checkItem{Name: "table"}
	err := inspectTable(ctx, c.conn, c.cfg)
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		it.Status, it.Detail = checkOK, fmt.Sprintf("%s has the columns the relay uses", c.cfg.Table)
	case errors.Is(err, store.ErrNoTable):
		it.Status, it.Detail = checkFail, fmt.Sprintf("%s does not exist", c.cfg.Table)
		it.Fix = "outbox-relay migrate (or check --fix), or the application's migration"
	case errors.As(err, &pgErr), ctx.Err() != nil:
		return unreadable(it.Name, "the table", err)
	case errors.Is(err, store.ErrCannotOrder):
		it.Status, it.Detail = checkFail, err.Error()
		it.Fix = "add the column named above and map it, or drop ordering_key from RELAY_COLUMNS (README: Ordered delivery per key)"
	default:
		it.Status, it.Detail = checkFail, err.Error()
		it.Fix = "each column above is named with its fix; or map the table's own columns with RELAY_COLUMNS and RELAY_STATUS_VALUES (docs/table.md: Adopting an existing outbox table)"
	}
	return it
}
