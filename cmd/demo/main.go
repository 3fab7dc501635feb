// Command demo runs outbox-relay end to end on this machine (`make demo`):
// a throwaway PostgreSQL, the real binary, and a small runner that verifies
// signatures. It inserts events the way an application does, waits until
// the relay has delivered, retried or dead-lettered each one, prints the
// outbox, and leaves nothing running.
//
// It needs Go and the PostgreSQL server binaries (Debian: apt-get install
// postgresql); see internal/pgtest for where they are looked for.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, &console{w: os.Stdout})
	interrupted := ctx.Err() != nil
	stop()
	switch {
	case interrupted:
		fmt.Fprintln(os.Stderr, "demo: interrupted; everything it started has been stopped")
		os.Exit(130)
	case err != nil:
		fmt.Fprintln(os.Stderr, "demo: FAILED:", err)
		os.Exit(1)
	}
}

// Settings of the demo's relay: short backoffs and a short sweep interval,
// so that a retry and the sweep-only fallback both show within seconds.
const (
	sweepInterval = 2 * time.Second
	drainTimeout  = 30 * time.Second
)

func run(ctx context.Context, out *console) error {
	// 1. A throwaway PostgreSQL with wal_level=logical.
	out.printf("== starting a throwaway PostgreSQL")
	pg, err := pgtest.Start()
	if err != nil {
		return err
	}
	defer stopPostgres(pg, out)
	dbURL := pg.URL("postgres")
	shown, _ := url.Parse(dbURL)
	shown.User = url.User(shown.User.Username())
	out.printf("   %s (wal_level=logical, password not shown)", shown)

	// 2. The real binary, and the table it needs.
	out.printf("== building outbox-relay and running `outbox-relay migrate`")
	tmp, err := os.MkdirTemp("", "outbox-relay-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin, err := buildAndMigrate(ctx, tmp, dbURL, out)
	if err != nil {
		return err
	}

	// 3. The runner, with a fresh signing secret.
	key := make([]byte, 32)
	rand.Read(key)
	rn, err := startRunner(key, out)
	if err != nil {
		return err
	}
	defer rn.Stop()
	out.printf("== runner listening on %s (verifies Standard Webhooks signatures)", rn.URL())

	// 4. The relay, as a child process configured by its environment only.
	relay, err := launchRelay(ctx, bin, dbURL, rn.URL(), key, out)
	if err != nil {
		return err
	}
	defer relay.Stop(10 * time.Second) // on any early return; a no-op after the stop in finish

	db, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer db.Close(context.WithoutCancel(ctx))
	out.printf("== relay ready; replication stream: %s", streamState(ctx, db))

	// 5 and 6. Events in, outcomes out.
	events, rows, badSigs, err := deliverSamples(ctx, db, relay, rn, out)
	if err != nil {
		return err
	}
	return finish(relay, rn, events, rows, badSigs, out)
}

// stopPostgres stops the cluster and removes its data directory.
func stopPostgres(pg *pgtest.Cluster, out *console) {
	err := pg.Stop()
	if err != nil {
		// A Ctrl-C reaches pg_ctl too, being in our process group, and
		// interrupts its wait; the server is stopping anyway.
		err = pg.Stop()
	}
	if err != nil {
		out.printf("== stopping PostgreSQL: %v", err)
		return
	}
	out.printf("== PostgreSQL stopped, its data directory removed")
}

// buildAndMigrate builds the binary into dir and runs its migrate command.
func buildAndMigrate(ctx context.Context, dir, dbURL string, out *console) (string, error) {
	// Built as a release would be, with the version the relay sends in
	// User-Agent.
	bin, err := relaytest.Build(ctx, dir, relaytest.BuildOptions{Version: "demo"})
	if err != nil {
		return "", err
	}
	return bin, migrate(ctx, bin, relayEnv("RELAY_DATABASE_URL="+dbURL), out)
}

// launchRelay starts the relay, signing with key, and waits until it is
// ready.
func launchRelay(ctx context.Context, bin, dbURL, runnerURL string, key []byte, out *console) (*relaytest.Process, error) {
	healthAddr, err := relaytest.FreeAddr()
	if err != nil {
		return nil, err
	}
	out.printf("== starting the relay (RELAY_CDC=auto, sweep every %s)", sweepInterval)
	relay, err := startRelay(bin, relayEnv(
		"RELAY_DATABASE_URL="+dbURL,
		"RELAY_RUNNER_URL="+runnerURL,
		"RELAY_RUNNER_SECRET=whsec_"+base64.StdEncoding.EncodeToString(key),
		"RELAY_CDC=auto",
		"RELAY_BACKOFF_BASE=200ms",
		"RELAY_BACKOFF_MAX=2s",
		"RELAY_SWEEP_INTERVAL="+sweepInterval.String(),
		"RELAY_LOG_FORMAT=text",
		"RELAY_LISTEN_ADDR="+healthAddr,
	), out)
	if err != nil {
		return nil, err
	}
	if err := relay.WaitReady(ctx, "http://"+healthAddr+"/readyz", 30*time.Second); err != nil {
		relay.Stop(10 * time.Second)
		return nil, err
	}
	return relay, nil
}

// deliverSamples inserts the sample events, waits until the relay has
// settled every row, and shows the latencies and the table; badSigs is
// how many requests the runner refused for their signature.
func deliverSamples(ctx context.Context, db *pgx.Conn, relay *relaytest.Process, rn *runner, out *console) (events []event, rows []outboxRow, badSigs int, err error) {
	// 5. Events, inserted the way the application does it.
	out.printf("== inserting %d events, each in a transaction with its business row", len(samples))
	events, err = insertSamples(ctx, db, out)
	if err != nil {
		return nil, nil, 0, err
	}

	// 6. Wait until the relay has settled every row, then show the table.
	out.printf("== waiting until no row is pending (at most %s)", drainTimeout)
	if err := waitSettled(ctx, db, relay, drainTimeout); err != nil {
		return nil, nil, 0, err
	}
	first, requests, badSigs := rn.stats()
	printLatency(out, events, first)
	rows, err = readOutbox(ctx, db)
	if err != nil {
		return nil, nil, 0, err
	}
	printOutbox(out, rows, requests, badSigs)
	return events, rows, badSigs, nil
}

// finish shuts down in order, the relay first as an orchestrator would,
// and checks the outcomes.
func finish(relay *relaytest.Process, rn *runner, events []event, rows []outboxRow, badSigs int, out *console) error {
	out.printf("== sending SIGTERM to the relay")
	code := relay.Stop(30 * time.Second)
	out.printf("   relay exited with code %d", code)
	rn.Stop()
	out.printf("== runner stopped")

	problems := check(events, rows, badSigs)
	if code != 0 {
		problems = append(problems, fmt.Sprintf("relay exited with code %d, want 0", code))
	}
	if len(problems) > 0 {
		for _, p := range problems {
			out.printf("   unexpected: %s", p)
		}
		return errors.New("the outcomes were not the expected ones")
	}
	out.printf("== all outcomes as expected: 4 delivered (the flaky one on attempt 3), 1 dead after 1 attempt")
	return nil
}

// waitSettled polls the table until no row is pending.
func waitSettled(ctx context.Context, db *pgx.Conn, relay *relaytest.Process, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var pending int
		if err := db.QueryRow(ctx, `SELECT count(*) FROM portal_event_outbox WHERE status = 'pending'`).Scan(&pending); err != nil {
			return err
		}
		if pending == 0 {
			return nil
		}
		if code, ok := relay.Exited(); ok {
			return fmt.Errorf("relay exited with code %d while %d rows were pending", code, pending)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d rows still pending after %s", pending, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// streamState says whether the relay holds its replication slot (the
// default name, outbox_relay). It waits a few seconds for the slot, since
// the stream connects after /readyz answers.
func streamState(ctx context.Context, db *pgx.Conn) string {
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		var active bool
		err := db.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = 'outbox_relay'`).Scan(&active)
		if err == nil && active {
			return "active (slot outbox_relay): events arrive within milliseconds of the commit"
		}
		select {
		case <-ctx.Done():
			return "unknown (interrupted)"
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Sprintf("not active: delivering sweep-only, within %s of the commit", sweepInterval)
}

// console serialises the lines of the demo, the runner and the relay.
type console struct {
	mu sync.Mutex
	w  io.Writer
}

func (c *console) printf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintf(c.w, format+"\n", args...)
}
