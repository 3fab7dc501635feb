package cdc

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// How the stream connects, and how what it says is kept free of the
// password.

// ApplicationName is the stream's application_name, by which a slot's
// holder shows as a relay in pg_stat_activity.
const ApplicationName = "outbox-relay-cdc"

// dbConfig is how the stream connects: an ordinary connection for SQL and
// a replication connection (walsender in database mode, which runs both
// replication commands and SQL) for the stream.
type dbConfig struct {
	sql  *pgx.ConnConfig
	repl *pgconn.Config
}

// parseConfig reads the database URL once; its errors never quote it,
// since it holds the password.
func parseConfig(url string) (dbConfig, error) {
	c, err := pgx.ParseConfig(url)
	if err != nil {
		return dbConfig{}, errors.New("cdc: the database URL cannot be parsed as a connection string")
	}
	if c.ConnectTimeout == 0 || c.ConnectTimeout > queryTimeout {
		c.ConnectTimeout = queryTimeout
	}
	c.RuntimeParams["application_name"] = ApplicationName
	r := c.Config.Copy()
	r.RuntimeParams["replication"] = "database"
	// pgoutput prints values with the walsender's settings: these make
	// timestamptz text that store.TupleDecoder reads.
	r.RuntimeParams["DateStyle"] = "ISO"
	r.RuntimeParams["TimeZone"] = "UTC"
	return dbConfig{sql: c, repl: r}, nil
}

// closeConn closes a connection within a second, also after ctx is done.
func closeConn(ctx context.Context, c interface{ Close(context.Context) error }) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	_ = c.Close(cctx)
}

// redact is err's message without the password, whatever quoted it.
func (s *Stream) redact(err error) string {
	s.mu.Lock()
	pw := s.password
	s.mu.Unlock()
	return redact(err, pw)
}

func redact(err error, password string) string {
	if err == nil {
		return ""
	}
	msg := err.Error()
	if password != "" {
		msg = strings.ReplaceAll(msg, password, "xxxxx")
	}
	return msg
}
