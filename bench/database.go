package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// database is a fresh, migrated database for one measure.
type database struct {
	name     string
	url      string
	relayURL string // url as the relay's role
	pool     *pgxpool.Pool
	slot     string   // RELAY_SLOT_NAME: slot names are cluster-wide
	env      []string // RELAY_* settings of the table (migrate's and the relay's)
}

var nonIdent = regexp.MustCompile(`[^a-z0-9_]+`)

// newDB creates a database, commits in it with synchronous_commit on (see
// the doc: the cluster's default is off), and runs `outbox-relay migrate`
// with env added to its settings.
func (b *bench) newDB(ctx context.Context, label string, env ...string) (*database, error) {
	b.dbSeq++
	name := fmt.Sprintf("bench_%02d_%s", b.dbSeq, nonIdent.ReplaceAllString(strings.ToLower(label), "_"))
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := b.admin.Exec(ctx, "CREATE DATABASE "+ident+" TEMPLATE template0"); err != nil {
		return nil, fmt.Errorf("create database: %w", err)
	}
	// A database setting outranks the server's command line, so every
	// session here (the relay's included) commits as an application would.
	if _, err := b.admin.Exec(ctx, "ALTER DATABASE "+ident+" SET synchronous_commit = on"); err != nil {
		return nil, fmt.Errorf("set synchronous_commit: %w", err)
	}
	d := &database{name: name, url: b.cluster.URL(name), slot: "bench_" + strconv.Itoa(b.dbSeq), env: env}
	d.relayURL = b.relayURL(d.url)
	mig := exec.CommandContext(ctx, b.binary, "migrate")
	mig.Env = append([]string{"PATH=" + os.Getenv("PATH"), "RELAY_DATABASE_URL=" + d.url, "RELAY_LOG_LEVEL=warn"}, env...)
	if o, err := mig.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("outbox-relay migrate: %w\n%s", err, o)
	}
	pool, err := openPool(ctx, d.url, 16)
	if err != nil {
		return nil, err
	}
	d.pool = pool
	b.mu.Lock()
	b.dbs[d] = true
	b.mu.Unlock()
	return d, nil
}

// dropDB drops a database and its slot, so that neither holds WAL or disk
// for the measures after it.
func (b *bench) dropDB(d *database) {
	b.mu.Lock()
	delete(b.dbs, d)
	b.mu.Unlock()
	d.pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// A relay killed in the middle of a stream leaves its walsender
	// running until it notices: DropSlot ends it.
	if err := store.DropSlot(ctx, b.admin, d.slot); err != nil {
		b.logf("drop the slot of %s: %v", d.name, err)
	}
	if _, err := b.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{d.name}.Sanitize()+" WITH (FORCE)"); err != nil {
		b.logf("drop database %s: %v", d.name, err)
	}
}
