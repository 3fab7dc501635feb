package faults

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

const mib = 1 << 20

// slotFigures reads the relay slot's confirmed-flush lag and retained WAL.
func slotFigures(t *testing.T, d *db) (lag, retained int64, ok bool) {
	t.Helper()
	err := d.pool.QueryRow(context.Background(), `SELECT
		(pg_current_wal_lsn() - confirmed_flush_lsn)::int8, (pg_current_wal_lsn() - restart_lsn)::int8
		FROM pg_replication_slots WHERE slot_name = 'outbox_relay'`).Scan(&lag, &retained)
	return lag, retained, err == nil
}

// writeWAL writes about n bytes of WAL into a table the relay does not
// publish, in chunks, until done or ctx ends.
func writeWAL(ctx context.Context, d *db, n int64) error {
	if _, err := d.pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS unrelated (id bigserial, pad text)`); err != nil {
		return err
	}
	var start int64
	if err := d.pool.QueryRow(ctx, `SELECT (pg_current_wal_lsn() - '0/0')::int8`).Scan(&start); err != nil {
		return err
	}
	for {
		var now int64
		if _, err := d.pool.Exec(ctx, `INSERT INTO unrelated (pad) SELECT repeat('w', 900) FROM generate_series(1, 2000)`); err != nil {
			return err
		}
		if err := d.pool.QueryRow(ctx, `SELECT (pg_current_wal_lsn() - '0/0')::int8`).Scan(&now); err != nil {
			return err
		}
		if now-start >= n {
			return nil
		}
	}
}

// The runner answers 503, then refuses connections, while inserts go on
// and unrelated WAL is written. The slot must not hold WAL for the
// outage: the rows wait in the table, not in the slot.
func TestRunnerOutage(t *testing.T) {
	d, rn := fresh(t)
	startRelay(t, relayEnv(d, rn, "RELAY_BACKOFF_BASE=200ms", "RELAY_BACKOFF_MAX=2s"))
	pgtest.WaitFor(t, 30*time.Second, "the slot", func() bool { _, _, ok := slotFigures(t, d); return ok })

	outage := time.Duration(scale(6, 30)) * time.Second
	walBytes := int64(scale(40, 300)) * mib
	in := startInserter(t, d, 50, 2)
	rn.SetAnswer(func(w http.ResponseWriter, _ *http.Request, _ []byte) bool {
		w.WriteHeader(http.StatusServiceUnavailable)
		return false
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	walDone := make(chan error, 1)
	go func() { walDone <- writeWAL(ctx, d, walBytes) }()

	var maxLag int64
	start := time.Now()
	refusing := false
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for time.Since(start) < outage {
		<-tick.C // sample once a second: the measurement's own rate
		if !refusing && time.Since(start) > outage/2 {
			rn.Stop() // now connections are refused
			refusing = true
		}
		if lag, retained, ok := slotFigures(t, d); ok {
			maxLag = max(maxLag, lag)
			t.Logf("t=%s flush lag %d KiB, retained %d KiB", time.Since(start).Round(time.Second), lag/1024, retained/1024)
		}
	}
	if err := <-walDone; err != nil {
		t.Fatal(err)
	}
	if maxLag >= 16*mib {
		t.Errorf("confirmed-flush lag reached %d MiB during the outage, want < 16", maxLag/mib)
	}
	// restart_lsn moves when the walsender has decoded a running-xacts
	// record past the confirmed position; a CHECKPOINT writes one. The
	// walsender may still be decoding the burst, so try a few times.
	var retained, lag int64
	for try := 0; ; try++ {
		if _, err := d.pool.Exec(context.Background(), `CHECKPOINT`); err != nil {
			t.Fatal(err)
		}
		lag, retained, _ = slotFigures(t, d)
		if retained < 16*mib || try == 30 {
			break
		}
		time.Sleep(time.Second)
	}
	if retained >= 16*mib {
		t.Errorf("slot retains %d MiB after CHECKPOINT during the outage, want < 16", retained/mib)
	}
	t.Logf("max flush lag %d KiB during the outage; after CHECKPOINT retained %d KiB, lag %d KiB", maxLag/1024, retained/1024, lag/1024)
	// The rows waited in the table, and the breaker kept the outage from
	// counting: at most the first failure of a streak counts (a row being
	// probed this moment, leased, has an attempt its outcome gives back).
	if n := d.count(t, "status = 'pending'"); n == 0 {
		t.Error("no row was waiting in the table during the outage")
	}
	if n := d.count(t, "attempts > 1 AND next_attempt_at < now() + interval '10 seconds'"); n > 0 {
		t.Errorf("%d rows have more than one attempt counted during the outage", n)
	}
	in.stop()
	rn.SetAnswer(nil)
	restartRunner(t, rn)
	r := verify(t, d, rn, 90*time.Second)
	record(t, "runner outage", r, map[string]string{
		"outage":            outage.String(),
		"wal_written_mib":   strconv.FormatInt(walBytes/mib, 10),
		"max_flush_lag_kib": strconv.FormatInt(maxLag/1024, 10),
		"retained_kib":      strconv.FormatInt(retained/1024, 10),
	})
}

// A flaky runner: random 500s, answers slower than the timeout, connection
// resets and garbage bodies. Everything is delivered, and the relay's
// goroutines and the runner's open connections come back to where they
// were.
func TestFlakyRunner(t *testing.T) { flakyRunner(t, unordered) }

func flakyRunner(t *testing.T, m mode) {
	d := m.db(t, pgtest.NewDB(t))
	rn := relaytest.NewRunner(t)
	rn.SetAnswer(flakyAnswer())
	addr := freeAddr(t)
	env := m.env(d, rn, "RELAY_HTTP_TIMEOUT=1s", "RELAY_BACKOFF_BASE=50ms", "RELAY_BACKOFF_MAX=500ms",
		"RELAY_MAX_ATTEMPTS=50", "RELAY_LISTEN_ADDR="+addr)
	startRelay(t, env)
	metricsURL := "http://" + addr + "/metrics"
	pgtest.WaitFor(t, 30*time.Second, "the metrics endpoint", func() bool { _, err := scrape(metricsURL, "go_goroutines"); return err == nil })
	before, _ := scrape(metricsURL, "go_goroutines")

	events := scale(300, 2000)
	in := m.inserter(t, d, 200, 2)
	pgtest.WaitFor(t, 2*time.Minute, "the inserts", func() bool { return in.count() >= events })
	in.stop()
	r := m.verify(t, d, rn, 3*time.Minute)

	// Idle connections close after the transport's idle timeout; what
	// must not happen is growth with the number of events.
	var after float64
	pgtest.WaitFor(t, 30*time.Second, "goroutines to settle", func() bool {
		after, _ = scrape(metricsURL, "go_goroutines")
		return after <= before+2*concurrencyDefault
	})
	if n := rn.OpenConns(); n > 2*concurrencyDefault {
		t.Errorf("%d connections open at the runner after the run, want at most %d", n, 2*concurrencyDefault)
	}
	record(t, m.fault("flaky runner"), r, map[string]string{
		"goroutines_before": fmt.Sprint(before), "goroutines_after": fmt.Sprint(after), "runner_conns_after": fmt.Sprint(rn.OpenConns()),
	})
}

// flakyAnswer is the flaky runner: 30 % 500s, 5 % answers slower than a
// 1 s timeout, 5 % connection resets, 10 % 200s with a garbage body.
func flakyAnswer() relaytest.Answer {
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(1, 2))
	return func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
		mu.Lock()
		x := rng.IntN(100)
		mu.Unlock()
		switch {
		case x < 30:
			w.WriteHeader(500)
			return false
		case x < 35:
			time.Sleep(1500 * time.Millisecond) // past RELAY_HTTP_TIMEOUT=1s
			return false
		case x < 40:
			if hj, ok := w.(http.Hijacker); ok {
				c, _, err := hj.Hijack()
				if err == nil {
					if tc, ok := c.(*net.TCPConn); ok {
						_ = tc.SetLinger(0) // a reset, not a clean close
					}
					c.Close()
				}
			}
			return false
		case x < 50:
			w.WriteHeader(200)
			_, _ = w.Write([]byte("\x00\xff garbage {{{"))
		}
		return true
	}
}

const concurrencyDefault = 16

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := relaytest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// scrape reads one unlabelled sample from a Prometheus endpoint.
func scrape(url, name string) (float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("no %s in %s", name, url)
}

// The slot and then the publication are dropped under load: the relay
// recreates them and nothing is lost.
func TestSlotAndPublicationDropped(t *testing.T) {
	d, rn := fresh(t)
	_, metrics := withMetrics(t, d, rn)
	in := startInserter(t, d, 200, 2)
	ctx := context.Background()
	// A slot being created is active too, with no confirmed_flush_lsn until
	// its start point is found: only a slot with one is streaming.
	// Terminating the walsender during the creation undoes the slot, and
	// doing it on every retry below would keep the relay from ever
	// finishing one (seen under load: the slot drop never happened).
	active := func() bool {
		var n int
		_ = d.pool.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots
			WHERE slot_name = 'outbox_relay' AND active AND confirmed_flush_lsn IS NOT NULL`).Scan(&n)
		return n == 1
	}
	// Streaming, not just active: a slot being created is active too, and
	// a drop loop that ends every creation would never find one to drop.
	pgtest.WaitFor(t, 30*time.Second, "the stream", func() bool { return streaming(metrics) })
	exec := func(sql string) error { _, err := d.pool.Exec(ctx, sql); return err }
	// The walsender holds the slot until it exits: terminate it, then
	// drop, and retry while the relay wins the race to take it again.
	pgtest.WaitFor(t, 30*time.Second, "the slot drop", func() bool {
		_ = exec(`SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
			WHERE slot_name = 'outbox_relay' AND confirmed_flush_lsn IS NOT NULL`)
		return exec(`SELECT pg_drop_replication_slot('outbox_relay')`) == nil
	})
	pgtest.WaitFor(t, 60*time.Second, "the stream to come back after the slot drop", active)

	if err := exec(`DROP PUBLICATION outbox_relay`); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, 60*time.Second, "the publication to be recreated", func() bool {
		var n int
		_ = d.pool.QueryRow(ctx, `SELECT count(*) FROM pg_publication_tables WHERE pubname = 'outbox_relay'`).Scan(&n)
		return n == 1
	})
	pgtest.WaitFor(t, 60*time.Second, "the stream to come back after the publication drop", active)
	in.stop()
	r := verify(t, d, rn, 60*time.Second)
	record(t, "slot and publication dropped", r, nil)
}
