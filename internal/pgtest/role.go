package pgtest

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/url"
	"os"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Role is a login role of a test's own, for what a superuser would not
// show: a privilege the relay's role lacks.
type Role struct {
	Ident string // the role's quoted name, for GRANT and REVOKE
	url   string // the test database, logged in as the role
}

// NewDBWithRole is NewDB with a fresh role that owns nothing and may do
// nothing in it until the test grants it, on the pool returned, which is
// the superuser's. The role is dropped after the database, which takes the
// role's privileges with it.
func NewDBWithRole(t testing.TB) (*pgxpool.Pool, Role) {
	t.Helper()
	if err := ensureShared(); err != nil {
		NewDB(t) // skips or fails as NewDB does
	}
	name := fmt.Sprintf("role_%d_%d", os.Getpid(), dbSeq.Add(1))
	ident := pgx.Identifier{name}.Sanitize()
	password := rand.Text()
	if err := adminExec("CREATE ROLE " + ident + " LOGIN PASSWORD '" + password + "'"); err != nil {
		t.Fatalf("pgtest: create role %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := adminExec("DROP ROLE IF EXISTS " + ident); err != nil {
			t.Errorf("pgtest: drop role %s: %v", name, err)
		}
	})
	db := NewDB(t)
	u, err := url.Parse(db)
	if err != nil {
		t.Fatalf("pgtest: parse %s: %v", db, err)
	}
	u.User = url.UserPassword(name, password)
	return openPool(t, db, nil), Role{Ident: ident, url: u.String()}
}

// Pool opens a pool on the test database logged in as the role, after
// configure (when set) has changed its configuration; sent counts the
// statements it sends.
func (r Role) Pool(t testing.TB, configure func(*pgxpool.Config)) (pool *pgxpool.Pool, sent *Statements) {
	t.Helper()
	sent = &Statements{}
	return openPool(t, r.url, func(cfg *pgxpool.Config) {
		if configure != nil {
			configure(cfg)
		}
		cfg.ConnConfig.Tracer = sent
	}), sent
}

func openPool(t testing.TB, dsn string, configure func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if configure != nil {
		configure(cfg)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Statements counts the statements sent on the connections it traces,
// whatever their outcome: set it as a pool's ConnConfig.Tracer.
type Statements struct{ n atomic.Int64 }

// TraceQueryStart counts a statement; it implements pgx.QueryTracer.
func (s *Statements) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	s.n.Add(1)
	return ctx
}

// TraceQueryEnd implements pgx.QueryTracer.
func (s *Statements) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// Count is how many statements were sent so far.
func (s *Statements) Count() int64 { return s.n.Load() }
