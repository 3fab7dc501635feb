package cdc

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Check reports why logical replication cannot be used with cfg, or nil
// when it can: the first readiness rule that fails (readiness.go), or the
// first fact that could not be read. The error is one line, the rule's
// verdict with its fix, and never holds the password. Lasting tells a
// failure only the server's operator can end from a passing one.
func Check(ctx context.Context, cfg Config) error {
	conf, err := parseConfig(cfg.DatabaseURL)
	if err != nil {
		return err
	}
	if err := check(ctx, cfg, conf); err != nil {
		redacted := errors.New(redact(err, conf.sql.Password))
		if Lasting(err) {
			return &errUnavailable{redacted}
		}
		return redacted
	}
	return nil
}

// Lasting reports whether err, from Check, is a failure only the server's
// operator can end (wal_level, a missing privilege, pg_hba.conf), as
// opposed to a passing one (every WAL sender busy, a connection blip).
func Lasting(err error) bool {
	var u *errUnavailable
	return errors.As(err, &u)
}

// errUnavailable is a reason logical replication cannot work on the server
// as it is configured, which only its operator can change: the stream then
// runs sweep-only and checks again now and then. Any other failure of the
// check (a connection blip, every WAL sender taken) is passing.
type errUnavailable struct{ reason error }

func (e *errUnavailable) Error() string { return e.reason.Error() }
func (e *errUnavailable) Unwrap() error { return e.reason }

// Passing refusals of a replication connection: every WAL sender or
// connection slot taken, or the server starting up or shutting down.
const (
	codeTooManyConnections = "53300"
	codeCannotConnectNow   = "57P03"
)

// check judges the server by the readiness rules. A failure that lasts is
// an errUnavailable; any other error passes.
func check(ctx context.Context, cfg Config, conf dbConfig) error {
	db, err := pgx.ConnectConfig(ctx, conf.sql)
	if err != nil {
		return fmt.Errorf("cannot connect: %w", err)
	}
	defer closeConn(ctx, db)
	f := ReadFacts(ctx, db, cfg)
	f.probe(ctx, conf)
	return judged(f, cfg)
}

// judged is the stream's reading of the verdicts on f: the first failure
// as an error, an errUnavailable when a failure lasts.
func judged(f Facts, cfg Config) error {
	v, failed := firstFailure(Judge(f, cfg))
	switch {
	case !failed:
		return nil
	case v.Lasting:
		return &errUnavailable{errors.New(v.String())}
	}
	return errors.New(v.String())
}

// probeReplication opens a replication connection as the stream does and
// runs IDENTIFY_SYSTEM, which writes nothing. A refusal for pg_hba.conf or
// authentication is an errUnavailable.
func probeReplication(ctx context.Context, conf dbConfig) error {
	cctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	rc, err := pgconn.ConnectConfig(cctx, conf.repl)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			err := fmt.Errorf("the server refuses a replication connection: %s", pgErr.Message)
			if pgErr.Code == codeTooManyConnections || pgErr.Code == codeCannotConnectNow {
				return err
			}
			return &errUnavailable{err} // pg_hba.conf or authentication
		}
		return fmt.Errorf("cannot open a replication connection: %w", err)
	}
	defer closeConn(ctx, rc)
	if _, err := pglogrepl.IdentifySystem(cctx, rc); err != nil {
		return fmt.Errorf("replication connection: %w", err)
	}
	return nil
}
