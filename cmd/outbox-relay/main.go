// Command outbox-relay delivers transactional-outbox rows from PostgreSQL
// to an HTTP runner. See docs/http.md for the contract. This package is the
// wiring: it turns the parsed configuration into each component and runs
// them (run.go), and holds the subcommands migrate, status and requeue.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/outbox-relay/outbox-relay/internal/config"
)

// version is the release, set by the build with -ldflags "-X main.version=…";
// the relay sends it in User-Agent.
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK       = 0
	exitFailure  = 1 // a runtime failure, or status: degraded
	exitUsage    = 2 // bad flags or settings, or status cannot connect
	usageSummary = `usage: outbox-relay [run|migrate|check|status|requeue|version] [flags]

Delivers rows of a PostgreSQL outbox table to an HTTP runner.

commands:
  run       deliver events (the default)
  migrate   create the outbox table, its index and publication (--print shows the SQL)
  check     preflight of the database and the runner, one line per item (--json, --fix)
  status    summary of the outbox and the replication slot (--json)
  requeue   move dead rows back to pending, or delivered ones to send again (--status, --limit, --dry-run)
  version   print the version

Settings are environment variables only:
`
)

// tracingSummary closes --help: the OpenTelemetry variables are the
// standard ones, not RELAY_*.
const tracingSummary = `
Tracing: OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT exports a
span per attempt over OTLP/HTTP (OTEL_SERVICE_NAME, default outbox-relay); see docs/operations.md.
`

// newFlags is the flag set of a subcommand, writing its errors to stderr.
func newFlags(cmd string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseFlags parses a subcommand's flags and refuses positional
// arguments: settings are RELAY_* variables, never arguments.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("%s takes flags only, got %q", fs.Name(), fs.Arg(0))}
	}
	return nil
}

// usageError is a mistake on the command line or in the settings: exit 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// run is main without the process: tests call it with their own context,
// arguments, environment and output.
func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	for _, a := range args {
		if a == "-h" || a == "--help" || a == "-help" {
			fmt.Fprint(stdout, usageSummary+config.Help()+tracingSummary)
			return exitOK
		}
	}
	if cmd == "help" {
		fmt.Fprint(stdout, usageSummary+config.Help()+tracingSummary)
		return exitOK
	}
	var err error
	switch cmd {
	case "run":
		err = runRelay(ctx, args, environ, stderr)
	case "migrate":
		err = runMigrate(ctx, args, environ, stdout, stderr)
	case "check":
		err = runCheck(ctx, args, environ, stdout, stderr)
	case "status":
		err = runStatus(ctx, args, environ, stdout, stderr)
	case "requeue":
		err = runRequeue(ctx, args, environ, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "outbox-relay", version)
	default:
		err = usageError{fmt.Errorf("unknown command %q (run, migrate, check, status, requeue, version)", cmd)}
	}
	var ue usageError
	var ce *config.Error
	var code exitCode
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &code):
		return int(code)
	case errors.As(err, new(errDegraded)):
		return exitFailure
	case errors.As(err, &ue), errors.As(err, &ce):
		fmt.Fprintln(stderr, "outbox-relay:", err)
		return exitUsage
	default:
		fmt.Fprintln(stderr, "outbox-relay:", err)
		return exitFailure
	}
}
