package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// The relay's own writes, kept out of the stream.
//
// The stream's publication carries the outbox's updates (cdc), so every
// outcome the relay writes would be decoded, sent to the relay and dropped
// there. On PostgreSQL 16 and later a session that carries a replication
// origin marks its transactions with it, and a stream that asks pgoutput
// for origin 'none' never receives them: the walsender skips them before
// reassembly. The relay writes its outcomes through one such session, so
// a relay process holds one origin. Origins are named from a fixed set per
// slot, so that replicas never share one (an origin is active in one
// session at a time) and the set stays bounded: the origin of a process
// that died is taken by the next one, and nothing needs cleaning up.

// OriginNames is how many origins the relays of one slot may hold at once.
const OriginNames = 8

// originName is origin n of the relays of slot.
func originName(slot string, n int) string { return fmt.Sprintf("outbox_relay_%s_%d", slot, n) }

// ErrNoOrigin says why a session writes without an origin.
var ErrNoOrigin = errors.New("no replication origin")

// TakeOrigin gives the session conn the first free origin of slot's set,
// creating it when missing, and returns its name. It fails with ErrNoOrigin
// (wrapped with the reason) on a server older than 16, for a role that may
// not use origins, or when every origin of the set is active elsewhere; the
// session then writes without one, which costs the walsender decoding time
// and nothing else.
func TakeOrigin(ctx context.Context, conn *pgx.Conn, slot string) (string, error) {
	if v := conn.PgConn().ParameterStatus("server_version"); MajorVersion(v) < 16 {
		return "", fmt.Errorf("%w: PostgreSQL %s cannot filter by origin", ErrNoOrigin, v)
	}
	for n := range OriginNames {
		name := originName(slot, n)
		_, err := conn.Exec(ctx, `SELECT pg_replication_origin_create($1) WHERE pg_replication_origin_oid($1) IS NULL`, name)
		if err != nil && !isCode(err, codeUniqueViolation) {
			return "", fmt.Errorf("%w: create origin %s: %w", ErrNoOrigin, name, err)
		}
		_, err = conn.Exec(ctx, `SELECT pg_replication_origin_session_setup($1)`, name)
		if err == nil {
			return name, nil
		}
		if !isCode(err, codeObjectInUse) {
			return "", fmt.Errorf("%w: take origin %s: %w", ErrNoOrigin, name, err)
		}
	}
	return "", fmt.Errorf("%w: all %d origins of slot %s are in use", ErrNoOrigin, OriginNames, slot)
}

// MajorVersion reads 17 from a server_version such as "17.2 (Debian …)"
// or "18beta1"; 0 when it cannot.
func MajorVersion(v string) int {
	n := 0
	for _, c := range v {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// codeObjectInUse: the origin is active in another session.
const codeObjectInUse = "55006"

// WithWriter makes the store write outcomes through w, a pool whose
// sessions carry a replication origin (TakeOrigin).
func WithWriter(w Querier) Option { return func(s *Store) { s.writer = w } }
