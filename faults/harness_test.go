// Package faults runs the real outbox-relay binary against a real
// PostgreSQL and a real HTTP runner, injects faults, and checks that no
// event is lost and none is sent twice outside the documented crash
// window. `make test` runs small counts; `make faults` (RELAY_FAULTS=full)
// runs the counts of docs/RELIABILITY.md.
package faults

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "outbox-relay-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "outbox-relay")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, "../cmd/outbox-relay")...).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build outbox-relay: %v\n%s", err, out)
		os.Exit(1)
	}
	defer os.RemoveAll(dir)
	pgtest.Main(m)
}

// full is true under `make faults`: the counts of the issue, not the CI
// subset.
var full = os.Getenv("RELAY_FAULTS") == "full"

// scale picks the count for the current mode.
func scale(small, big int) int {
	if full {
		return big
	}
	return small
}

var table = store.Table{Schema: "public", Name: "portal_event_outbox"}

// db is a migrated outbox database.
type db struct {
	url  string
	pool *pgxpool.Pool
}

func newDB(t *testing.T, url string) *db {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := store.Migrate(context.Background(), pool, table, "outbox_relay"); err != nil {
		t.Fatal(err)
	}
	return &db{url: url, pool: pool}
}

func (d *db) count(t *testing.T, where string) int {
	t.Helper()
	var n int
	if err := d.pool.QueryRow(context.Background(), `SELECT count(*) FROM portal_event_outbox WHERE `+where).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// eventIDs is every event_id in the table.
func (d *db) eventIDs(t *testing.T) map[string]bool {
	t.Helper()
	rows, err := d.pool.Query(context.Background(), `SELECT event_id::text FROM portal_event_outbox`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	ids := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids[id] = true
	}
	return ids
}

// runner is a real HTTP server on a fixed loopback port, so that it can
// be stopped (connections refused) and started again at the same URL.
type runner struct {
	addr string
	mu   sync.Mutex
	seen map[string]int
	srv  *http.Server
	open atomic.Int64 // connections open now
	// answer decides the answer; nil answers 200.
	answer func(w http.ResponseWriter, r *http.Request) bool
}

func newRunner(t *testing.T) *runner {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rn := &runner{addr: ln.Addr().String(), seen: map[string]int{}}
	rn.serve(ln)
	t.Cleanup(rn.stop)
	return rn
}

func (rn *runner) URL() string { return "http://" + rn.addr + "/events" }

func (rn *runner) serve(ln net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(rn.handle), ConnState: func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			rn.open.Add(1)
		case http.StateClosed, http.StateHijacked:
			rn.open.Add(-1)
		}
	}}
	rn.mu.Lock()
	rn.srv = srv
	rn.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

func (rn *runner) handle(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	rn.mu.Lock()
	answer := rn.answer
	rn.mu.Unlock()
	if answer != nil && !answer(w, r) {
		return // answered with a failure: not delivered
	}
	rn.mu.Lock()
	rn.seen[r.Header.Get("Idempotency-Key")]++
	rn.mu.Unlock()
}

func (rn *runner) setAnswer(f func(w http.ResponseWriter, r *http.Request) bool) {
	rn.mu.Lock()
	rn.answer = f
	rn.mu.Unlock()
}

// stop closes the listener: connections are refused until start.
func (rn *runner) stop() {
	rn.mu.Lock()
	srv := rn.srv
	rn.srv = nil
	rn.mu.Unlock()
	if srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = srv.Close()
	}
}

func (rn *runner) start(t *testing.T) {
	t.Helper()
	var ln net.Listener
	var err error
	// The port was ours a moment ago; TIME_WAIT does not block a listen.
	pgtest.WaitFor(t, 10*time.Second, "the runner port", func() bool {
		ln, err = net.Listen("tcp", rn.addr)
		return err == nil
	})
	rn.serve(ln)
}

// delivered is how many times each event was accepted.
func (rn *runner) delivered() map[string]int {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	out := make(map[string]int, len(rn.seen))
	for k, v := range rn.seen {
		out[k] = v
	}
	return out
}

// proc is a running relay process.
type proc struct {
	cmd  *exec.Cmd
	logs *lockedBuffer
	done chan struct{}
	err  error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// relayEnv is the environment of a relay under test; extra overrides.
func relayEnv(d *db, rn *runner, extra ...string) []string {
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"RELAY_DATABASE_URL=" + d.url,
		"RELAY_RUNNER_URL=" + rn.URL(),
		"RELAY_LISTEN_ADDR=off",
		"RELAY_SWEEP_INTERVAL=1s",
		"RELAY_BACKOFF_BASE=100ms",
		"RELAY_BACKOFF_MAX=1s",
		"RELAY_HTTP_TIMEOUT=2s",
		"RELAY_STATS_INTERVAL=1s",
		"RELAY_SHUTDOWN_TIMEOUT=5s",
		"RELAY_LOG_LEVEL=info",
	}
	return append(env, extra...)
}

func startRelay(t *testing.T, env []string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(binary), logs: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stdout = p.logs
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if strings.Contains(p.logs.String(), "WARNING: DATA RACE") {
			t.Errorf("the race detector fired in relay %d:\n%s", p.cmd.Process.Pid, p.logs.String())
		}
		if t.Failed() || os.Getenv("RELAY_FAULTS_LOGS") != "" {
			t.Logf("relay %d logs (tail):\n%s", p.cmd.Process.Pid, tail(p.logs.String(), 40))
		}
	})
	return p
}

func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// term sends SIGTERM and returns the exit code, or -1 past the deadline.
func (p *proc) term(deadline time.Duration) int {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(deadline):
		p.kill()
		return -1
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// inserter writes single-row transactions from a few connections at
// about rate rows per second until stopped; errors (the database may be
// restarting) are retried, so every counted row is committed.
type inserter struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	n      int
}

func startInserter(t *testing.T, d *db, rate, conns int) *inserter {
	ctx, cancel := context.WithCancel(context.Background())
	in := &inserter{cancel: cancel}
	every := time.Second * time.Duration(conns) / time.Duration(rate)
	for c := range conns {
		in.wg.Go(func() {
			tick := time.NewTicker(every)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				_, err := d.pool.Exec(ctx, `INSERT INTO portal_event_outbox (event_type, payload) VALUES ('fault.test', jsonb_build_object('conn', $1::int, 'i', $2::int))`, c, i)
				if err == nil {
					in.mu.Lock()
					in.n++
					in.mu.Unlock()
				}
			}
		})
	}
	t.Cleanup(in.stop)
	return in
}

func (in *inserter) stop() {
	in.cancel()
	in.wg.Wait()
}

func (in *inserter) count() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.n
}

// result is one row of docs/RELIABILITY.md.
type result struct {
	Events, Lost, Duplicates int
}

// verify waits until nothing is pending, then compares the table with
// what the runner accepted: every event delivered (none lost), and counts
// the extra sends.
func verify(t *testing.T, d *db, rn *runner, limit time.Duration) result {
	t.Helper()
	pgtest.WaitFor(t, limit, "every row to be delivered", func() bool { return d.count(t, "status <> 'delivered'") == 0 })
	ids := d.eventIDs(t)
	got := rn.delivered()
	r := result{Events: len(ids)}
	for id := range ids {
		switch n := got[id]; {
		case n == 0:
			r.Lost++
		case n > 1:
			r.Duplicates += n - 1
			var attempts int
			var lastErr *string
			_ = d.pool.QueryRow(context.Background(), `SELECT attempts, last_error FROM portal_event_outbox WHERE event_id = $1`, id).Scan(&attempts, &lastErr)
			t.Logf("event %s sent %d times; attempts %d, last_error %v", id, n, attempts, lastErr)
		}
	}
	for id := range got {
		if !ids[id] {
			t.Errorf("runner got an event that is not in the table: %q", id)
		}
	}
	if r.Lost > 0 {
		t.Errorf("%d of %d events marked delivered but never accepted by the runner", r.Lost, r.Events)
	}
	t.Logf("events %d, lost %d, duplicates %d", r.Events, r.Lost, r.Duplicates)
	return r
}
