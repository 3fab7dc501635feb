package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/cdc"
	"github.com/outbox-relay/outbox-relay/internal/config"
)

// checkStatus is the verdict on one item, as the readiness rules of cdc
// give it.
type checkStatus = cdc.Status

const (
	checkOK      = cdc.StatusOK
	checkWarn    = cdc.StatusWarn
	checkFail    = cdc.StatusFail
	checkUnknown = cdc.StatusUnknown // could not be read
	checkSkip    = cdc.StatusSkip    // does not apply, or depends on an item that failed
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
	c := newChecker(cfg, conn)
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
