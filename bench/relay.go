package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

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
	proc    *relaytest.Process
	addr    string // of /healthz and /metrics
	slot    string // streaming relays only
	started int64
}

// logLimit is how much of a relay's output the bench keeps: enough for the
// tail that explains a failure.
const logLimit = 64 << 10

// startRelay runs the relay on db in mode m; extra are more RELAY_*
// settings. It returns once /healthz answers and, for a streaming mode,
// once the slot is active.
func (b *bench) startRelay(ctx context.Context, db *database, m mode, label string, extra ...string) (*relayProc, error) {
	addr, err := relaytest.FreeAddr()
	if err != nil {
		return nil, err
	}
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"RELAY_DATABASE_URL=" + db.relayURL,
		"RELAY_RUNNER_URL=" + b.runner.URL(),
		"RELAY_CDC=" + m.CDC,
		"RELAY_SWEEP_INTERVAL=" + m.Sweep.String(),
		"RELAY_SLOT_NAME=" + db.slot,
		"RELAY_LOG_LEVEL=warn",
		"RELAY_LISTEN_ADDR=" + addr,
	}
	p := &relayProc{b: b, label: label, addr: addr, started: now()}
	env = append(append(env, db.env...), extra...)
	if p.proc, err = relaytest.Start(relaytest.Command{Binary: b.binary, Env: env, LogLimit: logLimit}); err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.procs[p] = true
	b.mu.Unlock()

	if err := p.proc.WaitReady(ctx, "http://"+p.addr+"/healthz", 20*time.Second); err != nil {
		p.kill()
		return nil, fmt.Errorf("%w\n%s", err, p.proc.Logs())
	}
	if !m.stream() {
		return p, nil
	}
	p.slot = db.slot
	if err := b.waitSlotActive(ctx, p, 15*time.Second); err != nil {
		p.kill()
		return nil, fmt.Errorf("%w\n%s", err, p.proc.Logs())
	}
	return p, nil
}

// waitSlotActive waits for some process to stream from p's slot.
func (b *bench) waitSlotActive(ctx context.Context, p *relayProc, limit time.Duration) error {
	active, err := poll(ctx, limit, 50*time.Millisecond, func() (bool, error) {
		select {
		case <-p.proc.Done():
			return false, errors.New("the relay exited")
		default:
		}
		sl, err := store.SlotInfo(ctx, b.admin, p.slot)
		return sl.Active, err
	})
	if err == nil && !active {
		err = fmt.Errorf("slot %s not active within %s", p.slot, limit)
	}
	return err
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
	pid := p.pid()
	if cpu, err := procCPU(pid); err == nil {
		st.CPUSeconds = cpu.Seconds()
	}
	if m, err := procStatus(pid); err == nil {
		st.PeakRSSMiB, st.RSSMiB = float64(m["VmHWM"])/1024, float64(m["VmRSS"])/1024
	}
	if d, err := p.deliveries(); err == nil {
		st.Stream, st.Sweep, st.Retries = d["stream/delivered"], d["sweep/delivered"], d["stream/retry"]+d["sweep/retry"]
	}
	if p.slot != "" {
		p.b.settleSlot(p.slot)
	}
	p.proc.Stop(15 * time.Second)
	if tail := strings.TrimSpace(p.proc.Logs()); tail != "" {
		st.LogTail = relaytest.LastLines(tail, 10)
	}
	p.b.mu.Lock()
	delete(p.b.procs, p)
	p.b.relays = append(p.b.relays, st)
	p.b.mu.Unlock()
	return st
}

// settleSlot brings the slot's restart_lsn up to the present before its
// relay stops. PostgreSQL moves it only when the session decodes a
// running_xacts record (written at a checkpoint, or every 15 s while there
// is activity), so a relay stopped right after a load leaves it behind the
// whole load, and the next relay on the database first re-decodes all that
// WAL: the next run's figures would carry this one's cost.
func (b *bench) settleSlot(slot string) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var lsn string
	if err := b.admin.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		b.logf("settle slot %s: %v", slot, err)
		return
	}
	if _, err := b.admin.Exec(ctx, `CHECKPOINT`); err != nil {
		b.logf("settle slot %s: %v", slot, err)
		return
	}
	settled := func() (done bool, err error) {
		err = b.admin.QueryRow(ctx, `SELECT coalesce(bool_and(restart_lsn >= $2::pg_lsn), true) FROM pg_replication_slots WHERE slot_name = $1`, slot, lsn).Scan(&done)
		return done, err
	}
	if ok, err := poll(ctx, 15*time.Second, 20*time.Millisecond, settled); !ok {
		b.logf("settle slot %s: restart_lsn did not reach %s within 15 s: %v", slot, lsn, err)
	}
}

// kill ends the process at once and waits for it.
func (p *relayProc) kill() {
	p.proc.Kill()
	p.b.mu.Lock()
	delete(p.b.procs, p)
	p.b.mu.Unlock()
}

func (p *relayProc) pid() int { return p.proc.Pid() }

// deliveredSince is what p delivered by the stream and by the sweep since
// before, an earlier scrape of deliveries; zero when it cannot be read.
func (p *relayProc) deliveredSince(before map[string]float64) (stream, sweep float64) {
	after, err := p.deliveries()
	if err != nil {
		return 0, 0
	}
	return after["stream/delivered"] - before["stream/delivered"], after["sweep/delivered"] - before["sweep/delivered"]
}

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

func rssGoal(r *results, g goal) target {
	rss := unmeasured("relay peak RSS (VmHWM), every run", fmt.Sprintf("≤ %.0f MiB", g.limit))
	if peak, label := r.peakRSS(); peak > 0 {
		rss.Measured = fmt.Sprintf("%.1f MiB (%s)", peak, label)
		rss.Verdict = verdictAtMost(peak, g.limit)
	}
	return rss
}

func (r *results) peakRSS() (float64, string) {
	peak, label := 0.0, ""
	for _, s := range r.Relays {
		if s.PeakRSSMiB > peak {
			peak, label = s.PeakRSSMiB, s.Label
		}
	}
	return peak, label
}

// mdCost is section 4: CPU and memory of every relay process.
func mdCost(b *markdown, r *results) {
	b.w("## 4. Cost\n\n")
	b.w("CPU is `utime + stime` from `/proc/<pid>/stat`; for PostgreSQL it is summed over the postmaster and its children, for the harness (runner and load generator) it is its own `getrusage`. Peak RSS is the relay's `VmHWM` from `/proc/<pid>/status`, read just before it stops. Per-load figures are in the throughput table; every relay process of the run:\n\n")
	b.w("| relay run | lifetime s | CPU s | peak RSS MiB | RSS at end MiB | via stream | via sweep | retries |\n|---|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, s := range r.Relays {
		b.w("| %s | %s | %s | %s | %s | %s | %s | %s |\n", s.Label, num(s.Seconds), num(s.CPUSeconds), num(s.PeakRSSMiB), num(s.RSSMiB),
			thousands(int(s.Stream)), thousands(int(s.Sweep)), thousands(int(s.Retries)))
	}
	mdWork(b, r)
}
