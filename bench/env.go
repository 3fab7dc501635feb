package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// epoch is the zero of every timestamp the harness keeps: offsets from it
// are read on the monotonic clock, so inserter and runner agree.
var epoch = time.Now()

// now is the time since epoch in nanoseconds.
func now() int64 { return int64(time.Since(epoch)) }

// table is the outbox table `outbox-relay migrate` creates by default.
const table = "public.portal_event_outbox"

// bench is the environment every measure runs in.
type bench struct {
	plan    plan
	out     io.Writer
	verbose bool

	tmp     string
	binary  string
	cluster *pgtest.Cluster
	admin   *pgxpool.Pool // the postgres database: CREATE/DROP DATABASE, slot queries
	runner  *runner

	dbSeq  int
	quiet  time.Duration // longest wait for a quiet machine before a run
	waited time.Duration // spent waiting so far, bounded by quietBudget
	stream streamState
	relays []relayStats // one per relay process, for the cost table

	mu    sync.Mutex
	procs map[*relayProc]bool // running, stopped by close
	dbs   map[*database]bool
}

// streamState says whether RELAY_CDC=on really streams in this build.
type streamState struct {
	Checked   bool   `json:"checked"`
	Available bool   `json:"available"`
	Reason    string `json:"reason,omitempty"`
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.out, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func (b *bench) debugf(format string, args ...any) {
	if b.verbose {
		b.logf(format, args...)
	}
}

// setup builds the relay, starts the cluster and the runner. On error it
// cleans up what it started.
func setup(ctx context.Context, p plan, out io.Writer, verbose bool) (_ *bench, err error) {
	b := &bench{plan: p, out: out, verbose: verbose, procs: map[*relayProc]bool{}, dbs: map[*database]bool{}}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	if b.tmp, err = os.MkdirTemp("", "outbox-relay-bench-"); err != nil {
		return nil, err
	}
	b.binary = filepath.Join(b.tmp, "outbox-relay")
	b.logf("building the relay")
	build := exec.CommandContext(ctx, "go", "build", "-o", b.binary, "./cmd/outbox-relay")
	build.Dir = moduleRoot()
	if o, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build: %w\n%s", err, o)
	}
	b.logf("starting PostgreSQL")
	if b.cluster, err = pgtest.Start(); err != nil {
		return nil, err
	}
	if b.admin, err = openPool(ctx, b.cluster.URL("postgres"), 4); err != nil {
		return nil, err
	}
	if b.runner, err = startRunner(); err != nil {
		return nil, err
	}
	return b, nil
}

// close stops everything still running, in reverse order of start. It uses
// its own deadline: it also runs after Ctrl-C cancelled the main context.
func (b *bench) close() {
	b.mu.Lock()
	procs := make([]*relayProc, 0, len(b.procs))
	for p := range b.procs {
		procs = append(procs, p)
	}
	dbs := make([]*database, 0, len(b.dbs))
	for d := range b.dbs {
		dbs = append(dbs, d)
	}
	b.mu.Unlock()
	for _, p := range procs {
		p.kill()
	}
	for _, d := range dbs {
		d.pool.Close()
	}
	if b.runner != nil {
		b.runner.stop()
	}
	if b.admin != nil {
		b.admin.Close()
	}
	if b.cluster != nil {
		if err := b.cluster.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "bench: stop PostgreSQL:", err)
		}
	}
	if b.tmp != "" {
		os.RemoveAll(b.tmp)
	}
}

// moduleRoot is the directory of go.mod, found from the working directory
// (go run ./bench runs there) or its parents.
func moduleRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		return "."
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if d == filepath.Dir(d) {
			return dir
		}
	}
}

func openPool(ctx context.Context, url string, conns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = conns
	cfg.ConnConfig.RuntimeParams["application_name"] = "bench"
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(cctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := pool.Ping(cctx); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// database is a fresh, migrated database for one measure.
type database struct {
	name string
	url  string
	pool *pgxpool.Pool
	slot string // RELAY_SLOT_NAME: slot names are cluster-wide
}

var nonIdent = regexp.MustCompile(`[^a-z0-9_]+`)

// newDB creates a database, commits in it with synchronous_commit on (see
// the doc: the cluster's default is off), and runs `outbox-relay migrate`.
func (b *bench) newDB(ctx context.Context, label string) (*database, error) {
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
	d := &database{name: name, url: b.cluster.URL(name), slot: "bench_" + strconv.Itoa(b.dbSeq)}
	mig := exec.CommandContext(ctx, b.binary, "migrate")
	mig.Env = []string{"PATH=" + os.Getenv("PATH"), "RELAY_DATABASE_URL=" + d.url, "RELAY_LOG_LEVEL=warn"}
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

// mode is a relay configuration under test.
type mode struct {
	Name  string
	CDC   string
	Sweep time.Duration
}

var (
	streamMode = mode{Name: "stream", CDC: "on", Sweep: time.Minute}
	sweepMode  = mode{Name: "sweep-only", CDC: "off", Sweep: time.Second}
)

func (m mode) stream() bool { return m.CDC != "off" }

// modes is the configurations a measure compares.
func modes() []mode { return []mode{streamMode, sweepMode} }

// relayProc is a running relay.
type relayProc struct {
	b       *bench
	label   string
	cmd     *exec.Cmd
	logs    *tailBuffer
	addr    string // of /metrics
	done    chan struct{}
	started int64
}

// errNoStream means the relay runs but never streamed from its slot.
var errNoStream = errors.New("the relay did not start streaming")

// startRelay runs the relay on db in mode m; extra are more RELAY_*
// settings. It returns once /healthz answers and, for a streaming mode,
// once the slot is active; errNoStream (with the relay running) when it
// never becomes so.
func (b *bench) startRelay(ctx context.Context, db *database, m mode, label string, extra ...string) (*relayProc, error) {
	if m.stream() && b.stream.Checked && !b.stream.Available {
		return nil, errNoStream
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"RELAY_DATABASE_URL=" + db.url,
		"RELAY_RUNNER_URL=" + b.runner.URL(),
		"RELAY_CDC=" + m.CDC,
		"RELAY_SWEEP_INTERVAL=" + m.Sweep.String(),
		"RELAY_SLOT_NAME=" + db.slot,
		"RELAY_LOG_LEVEL=warn",
		"RELAY_LISTEN_ADDR=127.0.0.1:" + strconv.Itoa(port),
	}
	p := &relayProc{b: b, label: label, logs: &tailBuffer{max: 64 << 10}, addr: "127.0.0.1:" + strconv.Itoa(port), done: make(chan struct{})}
	p.cmd = exec.Command(b.binary)
	p.cmd.Env = append(env, extra...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	p.started = now()
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start relay: %w", err)
	}
	b.mu.Lock()
	b.procs[p] = true
	b.mu.Unlock()
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()

	if err := p.waitHealthy(ctx, 20*time.Second); err != nil {
		p.kill()
		return nil, err
	}
	if !m.stream() {
		return p, nil
	}
	active, err := b.waitSlotActive(ctx, p, db.slot, 15*time.Second)
	if err != nil {
		p.kill()
		return nil, err
	}
	if !b.stream.Checked {
		b.stream.Checked = true
		b.stream.Available = active
		if !active {
			b.stream.Reason = "RELAY_CDC=on ran but slot " + db.slot + " never became active within 15 s (is cdc wired into cmd/outbox-relay?)"
			b.logf("stream not available: %s; stream measures are skipped", b.stream.Reason)
		}
	}
	if !active {
		p.kill()
		return nil, errNoStream
	}
	return p, nil
}

func (p *relayProc) waitHealthy(ctx context.Context, limit time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(limit)
	for {
		select {
		case <-p.done:
			return fmt.Errorf("relay exited at start: %s\n%s", p.cmd.ProcessState, p.logs.String())
		default:
		}
		resp, err := client.Get("http://" + p.addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("relay not healthy after %s: %v\n%s", limit, err, p.logs.String())
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

// waitSlotActive waits for some process to stream from slot.
func (b *bench) waitSlotActive(ctx context.Context, p *relayProc, slot string, limit time.Duration) (bool, error) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return false, nil
		default:
		}
		var active bool
		err := b.admin.QueryRow(ctx, `SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active)
		if err != nil {
			return false, err
		}
		if active {
			return true, nil
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return false, err
		}
	}
	return false, nil
}

// relayStats is what one relay process cost, read before it stopped.
type relayStats struct {
	Label      string  `json:"label"`
	Seconds    float64 `json:"seconds"`
	CPUSeconds float64 `json:"cpu_seconds"`
	PeakRSSMiB float64 `json:"peak_rss_mib"` // VmHWM
	RSSMiB     float64 `json:"rss_mib"`      // VmRSS at the end
	Stream     float64 `json:"stream_delivered"`
	Sweep      float64 `json:"sweep_delivered"`
	Retries    float64 `json:"retries"`
	LogTail    string  `json:"log_tail,omitempty"`
}

// stop reads the relay's figures, then sends SIGTERM and waits; past
// 15 s it kills it.
func (p *relayProc) stop() relayStats {
	st := relayStats{Label: p.label, Seconds: float64(now()-p.started) / 1e9}
	pid := p.cmd.Process.Pid
	if cpu, err := procCPU(pid); err == nil {
		st.CPUSeconds = cpu.Seconds()
	}
	if m, err := procStatus(pid); err == nil {
		st.PeakRSSMiB, st.RSSMiB = float64(m["VmHWM"])/1024, float64(m["VmRSS"])/1024
	}
	if d, err := p.deliveries(); err == nil {
		st.Stream, st.Sweep, st.Retries = d["stream/delivered"], d["sweep/delivered"], d["stream/retry"]+d["sweep/retry"]
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.kill()
	}
	if tail := strings.TrimSpace(p.logs.String()); tail != "" {
		st.LogTail = lastLines(tail, 10)
	}
	p.b.mu.Lock()
	delete(p.b.procs, p)
	p.b.relays = append(p.b.relays, st)
	p.b.mu.Unlock()
	return st
}

// kill ends the process at once and waits for it.
func (p *relayProc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
	p.b.mu.Lock()
	delete(p.b.procs, p)
	p.b.mu.Unlock()
}

func (p *relayProc) pid() int { return p.cmd.Process.Pid }

var deliveriesLine = regexp.MustCompile(`^outbox_relay_deliveries_total\{outcome="(\w+)",path="(\w+)"\} (\S+)$`)

// deliveries scrapes outbox_relay_deliveries_total as "path/outcome".
func (p *relayProc) deliveries() (map[string]float64, error) {
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + p.addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if m := deliveriesLine.FindStringSubmatch(sc.Text()); m != nil {
			v, _ := strconv.ParseFloat(m[3], 64)
			out[m[2]+"/"+m[1]] = v
		}
	}
	return out, sc.Err()
}

// procCPU is user plus system time of pid, from /proc/<pid>/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	_, ticks, err := parseStat(b)
	return ticks, err
}

// clockTick is USER_HZ, 100 on every Linux the harness targets.
const clockTick = 10 * time.Millisecond

// parseStat returns the ppid and utime+stime of a /proc/<pid>/stat line.
func parseStat(b []byte) (ppid int, cpu time.Duration, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, 0, errors.New("malformed stat")
	}
	ppid, _ = strconv.Atoi(f[1])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ppid, time.Duration(ut+st) * clockTick, nil
}

// procStatus reads the kB fields of /proc/<pid>/status (VmHWM, VmRSS).
func procStatus(pid int) (map[string]int64, error) {
	return procStatusFile(fmt.Sprintf("/proc/%d/status", pid))
}

// cpuSnapshot is the CPU time used so far by the relay, by PostgreSQL (the
// postmaster and its children) and by this process (runner and load).
type cpuSnapshot struct {
	relay, self time.Duration
	pg          map[int]time.Duration
	busy        time.Duration // the whole machine, from /proc/stat
	at          time.Time
}

func (b *bench) cpuNow(relay *relayProc) cpuSnapshot {
	s := cpuSnapshot{pg: map[int]time.Duration{}, at: time.Now()}
	if relay != nil {
		s.relay, _ = procCPU(relay.pid())
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	s.busy = machineBusy()
	pm := b.postmasterPID()
	if pm == 0 {
		return s
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		ppid, cpu, err := parseStat(raw)
		if err == nil && (pid == pm || ppid == pm) {
			s.pg[pid] = cpu
		}
	}
	return s
}

// cpuUse is CPU seconds spent between two snapshots. Backends that exited
// in between lose their last share; the harness keeps its connections.
type cpuUse struct {
	Relay    float64 `json:"relay_cpu_seconds"`
	Postgres float64 `json:"postgres_cpu_seconds"`
	Bench    float64 `json:"bench_cpu_seconds"` // runner and load generator
	// Other is the rest of the machine's busy time: processes that are
	// not part of the benchmark (the machine is shared).
	Other float64 `json:"other_cpu_seconds"`
	// Busy is the machine's busy share over the interval, 0 to 1.
	Busy float64 `json:"machine_busy"`
}

func cpuBetween(a, z cpuSnapshot) cpuUse {
	var pg time.Duration
	for pid, t := range z.pg {
		pg += t - a.pg[pid]
	}
	u := cpuUse{Relay: (z.relay - a.relay).Seconds(), Postgres: pg.Seconds(), Bench: (z.self - a.self).Seconds()}
	busy := (z.busy - a.busy).Seconds()
	u.Other = max(busy-u.Relay-u.Postgres-u.Bench, 0)
	if wall := z.at.Sub(a.at).Seconds(); wall > 0 {
		u.Busy = busy / (wall * float64(runtime.NumCPU()))
	}
	return u
}

// machineBusy is the CPU time all processors spent not idle, from the
// first line of /proc/stat (user nice system idle iowait irq softirq steal).
func machineBusy() time.Duration {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range f[1:9] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		busy += n
	}
	return time.Duration(busy) * clockTick
}

func (b *bench) postmasterPID() int {
	raw, err := os.ReadFile(filepath.Join(b.cluster.Dir(), "data", "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// machine describes where the figures come from.
type machine struct {
	CPUs       int     `json:"cpus"`
	CPUModel   string  `json:"cpu_model"`
	MemoryGiB  float64 `json:"memory_gib"`
	Kernel     string  `json:"kernel"`
	Go         string  `json:"go"`
	Postgres   string  `json:"postgres"`
	Relay      string  `json:"relay_version"`
	Commit     string  `json:"commit"`
	PerfRecord bool    `json:"perf"`
}

func (b *bench) machine(ctx context.Context) machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(raw), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if st, err := procStatusFile("/proc/meminfo"); err == nil {
		m.MemoryGiB = float64(st["MemTotal"]) / (1 << 20)
	}
	if raw, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(raw))
	}
	_ = b.admin.QueryRow(ctx, `SHOW server_version`).Scan(&m.Postgres)
	if o, err := exec.CommandContext(ctx, b.binary, "version").Output(); err == nil {
		m.Relay = strings.TrimSpace(string(o))
	}
	git := exec.CommandContext(ctx, "git", "describe", "--always", "--dirty")
	git.Dir = moduleRoot()
	if o, err := git.Output(); err == nil {
		m.Commit = strings.TrimSpace(string(o))
	}
	_, err := exec.LookPath("perf")
	m.PerfRecord = err == nil
	return m
}

// procStatusFile reads the "Key: n kB" lines of a /proc file.
func procStatusFile(path string) (map[string]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		if err == nil {
			out[k] = n
		}
	}
	return out, nil
}

// settings are the server and relay settings that shape the figures.
func (b *bench) settings(ctx context.Context) map[string]string {
	s := map[string]string{}
	for _, name := range []string{"fsync", "synchronous_commit", "full_page_writes", "shared_buffers", "wal_level", "max_wal_size", "checkpoint_timeout", "wal_writer_delay", "autovacuum"} {
		var v string
		if err := b.admin.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v); err == nil {
			s["server."+name] = v
		}
	}
	s["bench_databases.synchronous_commit"] = "on"
	s["relay.RELAY_LOG_LEVEL"] = "warn"
	s["relay.other"] = "defaults (RELAY_CONCURRENCY=16, RELAY_BATCH_SIZE=100, RELAY_HTTP_TIMEOUT=10s)"
	return s
}

// quietBusy is the machine's busy share below which it counts as quiet.
const quietBusy = 0.25

// quietBudget bounds all the waits for a quiet machine in one run, so
// that a busy machine cannot stretch make bench by minutes.
const quietBudget = 90 * time.Second

// waitQuiet waits, at most limit, for the machine to be quiet: other work
// on a shared machine (a test suite, a build) takes CPU from every process
// measured here. It samples half a second at a time and reports the busy
// share it last saw.
func (b *bench) waitQuiet(ctx context.Context, limit time.Duration) float64 {
	limit = min(limit, quietBudget-b.waited)
	if limit <= 0 {
		return 0
	}
	start := time.Now()
	defer func() { b.waited += time.Since(start) }()
	for {
		t0, busy0 := time.Now(), machineBusy()
		if sleep(ctx, 500*time.Millisecond) != nil {
			return 0
		}
		share := (machineBusy() - busy0).Seconds() / (time.Since(t0).Seconds() * float64(runtime.NumCPU()))
		if share < quietBusy {
			if waited := time.Since(start); waited > time.Second {
				b.logf("waited %s for the machine to be quiet", waited.Round(time.Second))
			}
			return share
		}
		if time.Since(start) > limit {
			b.logf("machine still %.0f %% busy with other work after %s; measuring anyway", 100*share, limit)
			return share
		}
	}
}
