package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/cdc"
	"github.com/outbox-relay/outbox-relay/internal/config"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// checkStatus is the verdict on one item.
type checkStatus string

const (
	checkOK      checkStatus = "ok"
	checkWarn    checkStatus = "warn"
	checkFail    checkStatus = "fail"
	checkUnknown checkStatus = "unknown" // could not be read
	checkSkip    checkStatus = "skip"    // does not apply, or depends on an item that failed
)

var checkMarks = map[checkStatus]string{checkOK: "✓", checkWarn: "!", checkFail: "✗", checkUnknown: "?", checkSkip: "-"}

// checkItem is one line of the report.
type checkItem struct {
	Name   string      `json:"name"`
	Status checkStatus `json:"status"`
	Detail string      `json:"detail"`
	Fix    string      `json:"fix,omitempty"`
	// replication marks an item of the fast path: failing, it blocks
	// only with RELAY_CDC=on.
	replication bool
}

// checkReport is what check prints; --json prints it as it is.
type checkReport struct {
	Table    string      `json:"table"`
	Runner   string      `json:"runner_url"` // without a password
	CDC      string      `json:"cdc_setting"`
	Fixed    []string    `json:"fixed,omitempty"` // what --fix did
	Items    []checkItem `json:"items"`
	Summary  string      `json:"summary"`
	ExitCode int         `json:"exit_code"`
}

// exitCode ends a command with its code and no further message: the
// command has printed its own report.
type exitCode int

func (c exitCode) Error() string { return fmt.Sprintf("exit status %d", int(c)) }

// checkTimeout bounds the whole check; each probe has its own shorter one.
const checkTimeout = 60 * time.Second

// runCheck is a preflight of the database and the runner before anything
// is deployed: one item per thing the relay depends on, each with its
// fix. It only reads, unless --fix asks it to create what migrate creates.
//
// Exit codes, documented in docs/commands.md: 0 nothing blocks (warnings may
// remain); 1 an item blocks delivery, or the fast path with RELAY_CDC=on
// (with auto a replication problem is a warning: the relay runs
// sweep-only); 2 the settings are bad, the database cannot be reached, or
// an item could not be read.
func runCheck(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := newFlags("check", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	fix := fs.Bool("fix", false, "first create the table, its indexes and the publication, as migrate does")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(environ, config.NeedRunner)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	conn, err := connectOne(cctx, cfg, "outbox-relay-check")
	if err != nil {
		return usageError{err} // exit 2: nothing could be checked
	}
	defer conn.Close(context.WithoutCancel(ctx))

	r := checkReport{Table: cfg.Table.String(), Runner: redactedURL(cfg.RunnerURL), CDC: cfg.CDC}
	if *fix {
		r.Fixed = fixSchema(cctx, conn, cfg)
	}
	c := &checker{cfg: cfg, conn: conn}
	c.read(cctx)
	r.Items = c.items(cctx)
	r.judge()
	if err := printReport(stdout, *asJSON, r, printCheck); err != nil {
		return err
	}
	if r.ExitCode != exitOK {
		return exitCode(r.ExitCode)
	}
	return nil
}

// fixSchema runs what migrate runs and says what came of it.
func fixSchema(ctx context.Context, conn *pgx.Conn, cfg config.Config) []string {
	warning, err := migrateSchema(ctx, conn, cfg)
	switch {
	case err != nil:
		return []string{fmt.Sprintf("migrate failed: %v", err)}
	case warning != "":
		return []string{fmt.Sprintf("migrated %s; warning: %s", cfg.Table, warning)}
	}
	return []string{fmt.Sprintf("migrated %s: table, indexes and publication %s exist", cfg.Table, cfg.Publication)}
}

// judge applies RELAY_CDC to the replication items and sets the exit code:
// a blocking item wins over one that could not be read.
func (r *checkReport) judge() {
	var failed, unknown, warned int
	for i := range r.Items {
		it := &r.Items[i]
		if it.Status == checkFail && it.replication && r.CDC == "auto" {
			it.Status = checkWarn
			it.Detail += "; with RELAY_CDC=auto the relay delivers sweep-only"
		}
		switch it.Status {
		case checkFail:
			failed++
		case checkUnknown:
			unknown++
		case checkWarn:
			warned++
		}
	}
	switch {
	case failed > 0:
		r.ExitCode = exitFailure
		verb := "stop"
		if failed == 1 {
			verb = "stops"
		}
		r.Summary = fmt.Sprintf("blocked: %s %s delivery or the fast path", plural(failed, "problem"), verb)
	case unknown > 0:
		r.ExitCode = exitUsage
		r.Summary = fmt.Sprintf("cannot tell: %s could not be read", plural(unknown, "item"))
	default:
		r.ExitCode = exitOK
		r.Summary = "ready: nothing blocks delivery or the fast path"
		if warned > 0 {
			r.Summary += fmt.Sprintf(" (%s)", plural(warned, "warning"))
		}
	}
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func printCheck(w io.Writer, r checkReport) {
	fmt.Fprintf(w, "outbox-relay check: table %s, runner %s, RELAY_CDC=%s\n\n", r.Table, r.Runner, r.CDC)
	for _, f := range r.Fixed {
		fmt.Fprintf(w, "fix: %s\n", f)
	}
	for _, it := range r.Items {
		fmt.Fprintf(w, "%s %s: %s\n", checkMarks[it.Status], it.Name, it.Detail)
		if it.Fix != "" && it.Status != checkOK {
			fmt.Fprintf(w, "    fix: %s\n", it.Fix)
		}
	}
	fmt.Fprintf(w, "\n%s\n", r.Summary)
}

// checker holds what the items are judged from, each read once.
type checker struct {
	cfg  config.Config
	conn *pgx.Conn

	server                      store.Server
	repl                        store.ReplicationSettings
	slot                        store.Slot
	slotSettings                store.SlotSettings
	serverErr, replErr, slotErr error
	slotSettingsErr             error
}

func (c *checker) read(ctx context.Context) {
	c.server, c.serverErr = store.ReadServer(ctx, c.conn)
	c.repl, c.replErr = store.ReadReplicationSettings(ctx, c.conn)
	c.slot, c.slotErr = store.SlotInfo(ctx, c.conn, c.cfg.SlotName)
	c.slotSettings, c.slotSettingsErr = store.ReadSlotSettings(ctx, c.conn)
}

// items judges every item, in the order the report lists them.
func (c *checker) items(ctx context.Context) []checkItem {
	items := []checkItem{c.serverItem()}
	if c.cfg.CDC == "off" {
		items = append(items, checkItem{Name: "replication", Status: checkSkip,
			Detail: "not checked: RELAY_CDC=off, the relay delivers sweep-only"})
	} else {
		items = append(items, c.walLevelItem(), c.capacityItem(), c.keepSizeItem())
		if it, ok := c.idleTimeoutItem(); ok {
			items = append(items, it)
		}
		items = append(items, c.roleItem(), c.replConnItem(ctx))
	}
	items = append(items, c.privilegesItem(ctx), c.tableItem(ctx))
	if c.cfg.CDC != "off" {
		items = append(items, c.publicationItem(ctx), c.slotItem(ctx), c.failoverItem())
	}
	return append(items, probeRunner(ctx, c.cfg.RunnerURL))
}

// unreadable is an item whose facts could not be read. A server error
// is quoted; the connection's errors never hold the password.
func unreadable(name, what string, err error) checkItem {
	return checkItem{Name: name, Status: checkUnknown, Detail: fmt.Sprintf("cannot read %s: %v", what, err)}
}

func (c *checker) serverItem() checkItem {
	s := c.server
	switch {
	case c.serverErr != nil:
		return unreadable("server", "the server version", c.serverErr)
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

func (c *checker) walLevelItem() checkItem {
	it := checkItem{Name: "wal_level", replication: true}
	switch {
	case c.replErr != nil:
		return unreadable(it.Name, "wal_level", c.replErr)
	case c.repl.WALLevel != "logical":
		it.Status = checkFail
		it.Detail = fmt.Sprintf("%s; the fast path needs logical", c.repl.WALLevel)
		it.Fix = "ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL"
	default:
		it.Status, it.Detail = checkOK, "logical"
	}
	return it
}

// capacityItem judges the free replication slots and WAL senders: the
// relay needs a slot unless its own exists, and a sender unless another
// relay already streams from that slot.
func (c *checker) capacityItem() checkItem {
	it := checkItem{Name: "replication_slots", replication: true}
	switch {
	case c.replErr != nil:
		return unreadable(it.Name, "max_replication_slots", c.replErr)
	case c.serverErr != nil:
		return unreadable(it.Name, "the WAL senders", c.serverErr)
	case c.slotErr != nil:
		return unreadable(it.Name, "the replication slots", c.slotErr)
	}
	freeSlots := c.repl.MaxSlots - c.repl.UsedSlots
	freeSenders := c.repl.MaxSenders - c.server.WALSenders
	it.Detail = fmt.Sprintf("%d of max_replication_slots = %d free, %d of max_wal_senders = %d free",
		freeSlots, c.repl.MaxSlots, freeSenders, c.repl.MaxSenders)
	switch {
	case !c.slot.Exists && freeSlots < 1:
		it.Status, it.Fix = checkFail, "raise max_replication_slots (a restart), or drop an unused slot"
	case !c.slot.Active && freeSenders < 1:
		it.Status, it.Fix = checkFail, "raise max_wal_senders (a restart)"
	default:
		it.Status = checkOK
	}
	return it
}

func (c *checker) keepSizeItem() checkItem {
	it := checkItem{Name: "max_slot_wal_keep_size"}
	switch {
	case c.slotErr != nil:
		return unreadable(it.Name, "max_slot_wal_keep_size", c.slotErr)
	case c.slot.MaxSlotWALKeepSize == "-1":
		it.Status = checkWarn
		it.Detail = "-1 (unlimited): while the relay is down, its slot keeps WAL until the disk is full"
		it.Fix = "ALTER SYSTEM SET max_slot_wal_keep_size = '4GB'; SELECT pg_reload_conf()"
	default:
		it.Status, it.Detail = checkOK, c.slot.MaxSlotWALKeepSize+" (the cap on WAL a slot keeps while the relay is down)"
	}
	return it
}

func (c *checker) roleItem() checkItem {
	it := checkItem{Name: "role", replication: true}
	switch {
	case c.replErr != nil:
		return unreadable(it.Name, "the role's attributes", c.replErr)
	case !c.repl.CanReplicate:
		it.Status = checkFail
		it.Detail = fmt.Sprintf("%s has neither REPLICATION nor superuser", c.repl.User)
		it.Fix = fmt.Sprintf("ALTER ROLE %s REPLICATION (as a superuser)", pgx.Identifier{c.repl.User}.Sanitize())
	default:
		it.Status, it.Detail = checkOK, fmt.Sprintf("%s may replicate (REPLICATION or superuser)", c.repl.User)
	}
	return it
}

// replConnItem opens a replication connection, since pg_hba.conf may
// refuse one to a role that may replicate.
func (c *checker) replConnItem(ctx context.Context) checkItem {
	it := checkItem{Name: "replication_connection", replication: true}
	if c.replErr != nil || !c.repl.CanReplicate {
		it.Status, it.Detail = checkSkip, "not tried: the role may not replicate"
		return it
	}
	if err := cdc.ProbeReplication(ctx, c.cfg.DatabaseURL); err != nil {
		it.Status, it.Detail = checkFail, err.Error()
		it.Fix = "add a pg_hba.conf line for the role and database (host <db> <role> <address> scram-sha-256), then SELECT pg_reload_conf()"
		return it
	}
	it.Status, it.Detail = checkOK, "accepted (IDENTIFY_SYSTEM)"
	return it
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
	user := c.repl.User
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

func (c *checker) publicationItem(ctx context.Context) checkItem {
	it := checkItem{Name: "publication", replication: true}
	name, t := c.cfg.Publication, c.cfg.Table
	p, err := store.ReadPublication(ctx, c.conn, name, t)
	if err != nil {
		return unreadable(it.Name, "publication "+name, err)
	}
	scope, err := store.ReadPublicationScope(ctx, c.conn, name)
	if err != nil {
		return unreadable(it.Name, "publication "+name, err)
	}
	ident := pgx.Identifier{name}.Sanitize()
	switch {
	case !p.Inserts:
		it.Status, it.Detail = checkFail, fmt.Sprintf("%s does not publish inserts", name)
		it.Fix = fmt.Sprintf("ALTER PUBLICATION %s SET (publish = 'insert')", ident)
	case p.Exists && p.HasTable:
		return publishedItem(it, p, scope)
	case !p.Exists && p.CanCreate:
		it.Status = checkOK
		it.Detail = fmt.Sprintf("%s does not exist yet; the relay creates it for %s (%s may)", name, t, p.User)
	case !p.Exists:
		it.Status = checkFail
		it.Detail = fmt.Sprintf("%s does not exist and %s may not create it (it needs CREATE on the database and to own %s)", name, p.User, t)
		it.Fix = "outbox-relay migrate (or check --fix) as the table's owner"
	case p.CanCreate:
		it.Status = checkWarn
		it.Detail = fmt.Sprintf("%s publishes %s but not %s; the relay will add %s to it", name, tableList(scope), t, t)
		it.Fix = "set RELAY_PUBLICATION to a publication of the outbox alone (the relay creates it), unless sharing this one is meant"
	default:
		it.Status = checkFail
		it.Detail = fmt.Sprintf("%s publishes %s but not %s, and %s may not add it (it must own the table)", name, tableList(scope), t, p.User)
		it.Fix = fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s as the table's owner, or set RELAY_PUBLICATION to a publication of its own", ident, t.Ident())
	}
	return it
}

// publishedItem judges a publication that serves the outbox. The stream
// needs the table's updates and deletes besides its inserts, to send each
// row as committed (without them every row is claimed first); truncates
// and other tables are decoded for nothing.
func publishedItem(it checkItem, p store.Publication, scope store.PublicationScope) checkItem {
	it.Status, it.Detail = checkOK, fmt.Sprintf("%s publishes inserts, updates and deletes of %s", p.Name, p.Table)
	ident := pgx.Identifier{p.Name}.Sanitize()
	others := slices.DeleteFunc(slices.Clone(scope.Tables), func(s string) bool { return s == p.Table.String() })
	switch {
	case !p.Changes && !p.Identity:
		it.Status = checkWarn
		it.Detail = fmt.Sprintf("%s publishes inserts into %s, which has no replica identity to publish its updates with: every row is claimed before it is sent", p.Name, p.Table)
		it.Fix = fmt.Sprintf("give %s a primary key, then ALTER PUBLICATION %s SET (publish = 'insert, update, delete')", p.Table, ident)
	case !p.Changes && p.Alone:
		it.Status = checkOK
		it.Detail = fmt.Sprintf("%s publishes inserts into %s; the relay adds its updates and deletes when it starts (it owns the publication)", p.Name, p.Table)
	case !p.Changes:
		it.Status = checkWarn
		it.Detail = fmt.Sprintf("%s publishes inserts into %s but not its updates and deletes, and serves other tables too: every row is claimed before it is sent", p.Name, p.Table)
		it.Fix = "set RELAY_PUBLICATION to a publication of the outbox alone (the relay creates it)"
	case scope.Truncates:
		it.Status = checkWarn
		it.Detail += ", and truncates too: the relay does not use them, they are decoded for nothing"
		it.Fix = fmt.Sprintf("ALTER PUBLICATION %s SET (publish = 'insert, update, delete')", ident)
	case scope.AllTables || len(others) > 0:
		it.Status = checkWarn
		it.Detail += fmt.Sprintf(", and %s too: their changes are decoded for nothing", tableList(store.PublicationScope{AllTables: scope.AllTables, Tables: others}))
		it.Fix = "set RELAY_PUBLICATION to a publication of the outbox alone (the relay creates it)"
	}
	return it
}

// tableList names what a publication publishes.
func tableList(s store.PublicationScope) string {
	switch {
	case s.AllTables:
		return "all tables"
	case len(s.Tables) == 0:
		return "no table"
	}
	return strings.Join(s.Tables, ", ")
}

func (c *checker) slotItem(ctx context.Context) checkItem {
	it := checkItem{Name: "slot", replication: true}
	sl, name := c.slot, c.cfg.SlotName
	switch {
	case c.slotErr != nil:
		return unreadable(it.Name, "slot "+name, c.slotErr)
	case !sl.Exists:
		it.Status, it.Detail = checkOK, fmt.Sprintf("%s does not exist; the relay creates it", name)
	case !cdc.SlotFits(sl):
		it.Status = checkFail
		it.Detail = fmt.Sprintf("%s exists but is not a pgoutput logical slot of database %s (%s, %s, %s)",
			name, sl.CurrentDatabase, sl.SlotType, sl.Plugin, sl.Database)
		it.Fix = fmt.Sprintf("SELECT pg_drop_replication_slot(%s), or set RELAY_SLOT_NAME to another name", store.QuoteLiteral(name))
	case sl.Active:
		return c.heldSlotItem(ctx, it)
	case sl.WALStatus == "lost":
		it.Status = checkWarn
		it.Detail = fmt.Sprintf("%s was invalidated (wal_status lost%s); the relay recreates it and the sweeper covers the gap", name, reasonSuffix(sl))
	default:
		it.Status, it.Detail = checkOK, fmt.Sprintf("%s exists, inactive; the relay resumes from %s", name, sl.ConfirmedFlushLSN)
	}
	return it
}

// heldSlotItem judges a slot some process streams from: another relay is
// what replicas are for; anything else keeps the fast path from this one.
func (c *checker) heldSlotItem(ctx context.Context, it checkItem) checkItem {
	name := c.cfg.SlotName
	s, _, err := store.ReadSession(ctx, c.conn, c.slot.ActivePID)
	if err != nil {
		return unreadable(it.Name, "the holder of slot "+name, err)
	}
	if s.ApplicationName == cdc.ApplicationName {
		it.Status = checkWarn
		it.Detail = fmt.Sprintf("%s is in use by another relay (%s); this one will stand by and take over when it stops", name, describeSession(s))
		return it
	}
	it.Status = checkFail
	it.Detail = fmt.Sprintf("%s is held by %s, which is not a relay", name, describeSession(s))
	it.Fix = fmt.Sprintf("stop that client, or end it: SELECT pg_terminate_backend(%d)", s.PID)
	return it
}

// describeSession names a process by what pg_stat_activity shows of it.
func describeSession(s store.Session) string {
	parts := []string{fmt.Sprintf("pid %d", s.PID)}
	if s.ApplicationName != "" {
		parts = append(parts, fmt.Sprintf("application_name %q", s.ApplicationName))
	}
	if s.User != "" {
		parts = append(parts, "user "+s.User)
	}
	if s.ClientAddr != "" {
		parts = append(parts, "client "+s.ClientAddr)
	}
	return strings.Join(parts, ", ")
}

// runnerProbeTimeout bounds the runner probe, name resolution included.
const runnerProbeTimeout = 5 * time.Second

// probeRunner asks the runner for a HEAD, or an OPTIONS when the HEAD gets
// no answer for a reason other than a refused connection or a timeout (a
// server that drops HEAD requests): any answer shows it is reachable, and
// neither sends an event.
func probeRunner(ctx context.Context, raw string) checkItem {
	it := checkItem{Name: "runner"}
	shown := redactedURL(raw)
	ctx, cancel := context.WithTimeout(ctx, runnerProbeTimeout)
	defer cancel()
	if err := resolveRunner(ctx, raw); err != nil {
		it.Status, it.Detail = checkFail, fmt.Sprintf("%s: %v", shown, err)
		it.Fix = "correct the host in RELAY_RUNNER_URL, or the DNS where the relay runs"
		return it
	}
	tr := &http.Transport{Proxy: http.ProxyFromEnvironment} // as the relay's client
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	start := time.Now()
	method := http.MethodHead
	resp, err := askRunner(ctx, client, method, raw)
	if err != nil && !refusedOrTimedOut(err) {
		method = http.MethodOptions
		resp, err = askRunner(ctx, client, method, raw)
	}
	if err != nil {
		it.Status, it.Detail = checkFail, fmt.Sprintf("%s: %v", shown, err)
		it.Fix = "start the runner, or correct RELAY_RUNNER_URL; until it answers, events wait in the table"
		return it
	}
	it.Status = checkOK
	it.Detail = fmt.Sprintf("%s answered %s with %s in %s", shown, method, resp.Status, roundMS(time.Since(start)))
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		it.Status = checkWarn
		it.Detail += fmt.Sprintf(" (Location %q): the relay follows no redirect, and a 3xx to its POST makes the event dead",
			resp.Header.Get("Location"))
		it.Fix = "set RELAY_RUNNER_URL to the URL the runner serves"
	}
	return it
}

// resolveRunner looks the runner's host up, unless a proxy does that.
func resolveRunner(ctx context.Context, raw string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, raw, nil)
	if err != nil {
		return err
	}
	if proxy, err := http.ProxyFromEnvironment(req); err != nil || proxy != nil {
		return nil // the proxy resolves it; the request says whether it can
	}
	host := req.URL.Hostname()
	if net.ParseIP(host) != nil {
		return nil
	}
	if _, err := net.DefaultResolver.LookupHost(ctx, host); err != nil {
		return fmt.Errorf("host %s does not resolve: %w", host, err)
	}
	return nil
}

// askRunner sends one bodiless request. Its error leaves out the URL,
// which the caller shows without a password.
func askRunner(ctx context.Context, client *http.Client, method, raw string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, raw, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "outbox-relay/"+version+" (check)")
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp, nil
}

func refusedOrTimedOut(err error) bool {
	var ne net.Error
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// redactedURL is the runner URL as check shows it: without a password.
func redactedURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "RELAY_RUNNER_URL"
	}
	return u.Redacted()
}

// roundMS shows a duration in whole milliseconds, a fast one as "<1ms".
func roundMS(d time.Duration) string {
	if d < time.Millisecond {
		return "<1ms"
	}
	return d.Round(time.Millisecond).String()
}
