package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

// perfNoise are frames every goroutine or syscall passes through, which
// say nothing about where the time goes.
var perfNoise = regexp.MustCompile(`runtime\.goexit|gowrap|WaitGroup\)\.Go\.func|entry_SYSCALL_64_after_hwframe|\.Run\.func\d+ |syscall\.Syscall|Syscall6`)

// profileResult is where the relay spends its CPU during a 20,000-row
// INSERT … SELECT, from perf (the binary serves no pprof).
type profileResult struct {
	Mode    string  `json:"mode"`
	Load    string  `json:"load"`
	Skipped string  `json:"skipped,omitempty"`
	Seconds float64 `json:"seconds"`
	CPU     cpuUse  `json:"cpu"`
	// Self is perf's flat profile (symbols by their own samples),
	// Children the cumulative one (a symbol and everything it calls).
	Self     []string `json:"self"`
	Children []string `json:"children"`
	// Areas are the cumulative shares of the frames that mark the
	// relay's main activities; DSOs splits samples by binary (the relay,
	// the kernel, the vDSO).
	Areas []area   `json:"areas"`
	DSOs  []string `json:"dsos"`
}

// area is one activity of the relay and its cumulative share of samples.
type area struct {
	What    string  `json:"what"`
	Frame   string  `json:"frame"`
	Percent float64 `json:"percent"`
}

// profileAreas are the frames that mark where the relay's time goes, with
// what each stands for. Shares overlap: allocation and syscalls happen
// inside the others.
var profileAreas = []struct{ frame, what string }{
	{"relay.(*Deliverer).work", "workers: build, sign and POST each event (HTTP client included)"},
	{"net/http.(*persistConn).writeLoop", "HTTP transport: writing requests"},
	{"net/http.(*persistConn).readLoop", "HTTP transport: reading answers"},
	{"relay.(*recorder).run", "recorder: outcome UPDATE … FROM unnest"},
	{"relay.(*Deliverer).DeliverIDs", "stream claims by id (UPDATE … RETURNING)"},
	{"relay.(*Deliverer).DeliverDue", "sweep claims (UPDATE … RETURNING)"},
	{"cdc.(*Stream).Run", "replication stream: receive, decode, hand off"},
	{"jackc/pgx/v5", "pgx, its busiest frame (SQL, inside the above)"},
	{"runtime.gcBgMarkWorker", "garbage collector, background marking"},
	{"runtime.mallocgc", "allocation (inside the above)"},
	{"runtime.schedule", "goroutine scheduler"},
	{"do_syscall_64", "system calls (inside the above)"},
}

// areas picks the profileAreas out of perf's cumulative report, whose
// lines read "children% self% [.] symbol".
func areas(children []string) []area {
	var out []area
	for _, pa := range profileAreas {
		for _, l := range children {
			if !strings.Contains(l, pa.frame) {
				continue
			}
			f := strings.Fields(l)
			pct, err := strconv.ParseFloat(strings.TrimSuffix(f[0], "%"), 64)
			if err == nil {
				out = append(out, area{What: pa.what, Frame: pa.frame, Percent: pct})
			}
			break
		}
	}
	return out
}

// profile repeats the 20,000-row bulk run under perf record. It is a
// separate run so that sampling does not slow the measured ones.
func (b *bench) profile(ctx context.Context) (*profileResult, error) {
	m := streamMode
	if b.stream.Checked && !b.stream.Available {
		m = sweepMode
	}
	const n = 20_000
	res := &profileResult{Mode: m.Name, Load: load{kind: "bulk", n: n}.String()}
	perf, err := exec.LookPath("perf")
	if err != nil {
		res.Skipped = "perf is not installed"
		return res, nil
	}
	db, err := b.newDB(ctx, "profile")
	if err != nil {
		return res, err
	}
	defer b.dropDB(db)
	p, err := b.startRelay(ctx, db, m, "profile, "+m.Name)
	if errors.Is(err, errNoStream) {
		m = sweepMode
		res.Mode = m.Name
		p, err = b.startRelay(ctx, db, m, "profile, "+m.Name)
	}
	if err != nil {
		return res, err
	}
	defer p.stop()

	data := filepath.Join(b.tmp, "perf.data")
	rec, err := startPerf(perf, data, p.pid())
	if err != nil {
		res.Skipped = "perf record: " + err.Error()
		return res, nil
	}
	defer func() { _ = rec.stop() }()
	if err := b.profileRun(ctx, db, p, rec, n, res); err != nil {
		return res, err
	}
	if err := readProfile(ctx, perf, data, res); err != nil {
		return res, err
	}
	b.logf("profile: %d areas, %d self entries", len(res.Areas), len(res.Self))
	return res, nil
}

// perfRecord is perf record attached to the relay.
type perfRecord struct {
	cmd     *exec.Cmd
	out     *relaytest.Buffer
	done    chan error
	stopped bool
}

func startPerf(perf, data string, pid int) (*perfRecord, error) {
	rec := &perfRecord{
		cmd:  exec.Command(perf, "record", "-F", "999", "-g", "-p", fmt.Sprint(pid), "-o", data),
		out:  &relaytest.Buffer{Limit: 8 << 10},
		done: make(chan error, 1),
	}
	rec.cmd.Stdout, rec.cmd.Stderr = rec.out, rec.out
	if err := rec.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { rec.done <- rec.cmd.Wait() }()
	return rec, nil
}

// stop interrupts perf, which then writes its data, and waits for it to
// exit; calls after the first do nothing.
func (rec *perfRecord) stop() error {
	if rec.stopped {
		return nil
	}
	rec.stopped = true
	_ = rec.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-rec.done:
		return err
	case <-time.After(30 * time.Second):
		_ = rec.cmd.Process.Kill()
		return errors.New("perf record did not stop")
	}
}

// profileRun is the bulk run that perf samples; it stops perf at the last
// receipt, so that the profile holds the delivery and nothing after it.
func (b *bench) profileRun(ctx context.Context, db *database, p *relayProc, rec *perfRecord, n int, res *profileResult) error {
	if err := sleep(ctx, 500*time.Millisecond); err != nil { // let perf attach
		return err
	}
	b.waitQuiet(ctx, b.quiet)
	b.runner.Reset(false, 0)
	cpu0 := b.cpuNow(p)
	t := now()
	if err := bulk(ctx, db.pool, n); err != nil {
		return err
	}
	ok, err := b.runner.WaitDistinct(ctx, n, 2*time.Minute)
	if err != nil {
		return err
	}
	res.Seconds = float64(since(b.runner.Counts().Last)-t) / 1e9
	res.CPU = cpuBetween(cpu0, b.cpuNow(p))
	if err := rec.stop(); err != nil {
		// perf exits non-zero on SIGINT on some versions; the data is
		// what matters.
		b.debugf("perf record: %v\n%s", err, rec.out.String())
	}
	if !ok {
		return fmt.Errorf("profile run: not every event delivered")
	}
	return nil
}

// readProfile fills res from perf's data: the flat and cumulative
// profiles, the activities, and the share of each binary.
func readProfile(ctx context.Context, perf, data string, res *profileResult) error {
	self, err := perfReport(ctx, perf, data, "--no-children", "--percent-limit", "0.8")
	if err != nil {
		return err
	}
	res.Self = self[:min(len(self), 20)]
	children, err := perfReport(ctx, perf, data, "--children", "--percent-limit", "0.3")
	if err != nil {
		return err
	}
	for _, l := range children {
		if !perfNoise.MatchString(l) && len(res.Children) < 20 {
			res.Children = append(res.Children, l)
		}
	}
	res.Areas = areas(children)
	dsos, err := exec.CommandContext(ctx, perf, "report", "-i", data, "--stdio", "--no-children", "--sort", "dso", "-g", "none").Output()
	if err == nil {
		for _, l := range strings.Split(string(dsos), "\n") {
			if l = strings.Join(strings.Fields(l), " "); l != "" && !strings.HasPrefix(l, "#") {
				res.DSOs = append(res.DSOs, l)
			}
		}
	}
	return nil
}

// perfReport is perf report by symbol with args, one entry a line, blank
// lines and comments left out.
func perfReport(ctx context.Context, perf, data string, args ...string) ([]string, error) {
	cmd := exec.CommandContext(ctx, perf, append([]string{"report", "-i", data, "--stdio", "--sort", "symbol", "-g", "none"}, args...)...)
	o, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("perf report: %w", err)
	}
	var lines []string
	for _, l := range strings.Split(string(o), "\n") {
		l = strings.TrimSuffix(strings.Join(strings.Fields(l), " "), " - -")
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		lines = append(lines, l)
	}
	return lines, nil
}

// mdProfile is where the relay's CPU goes, from perf.
func mdProfile(b *markdown, r *results) {
	b.w("## Where the relay's CPU goes\n\n")
	if p := r.Profile; p != nil && p.Skipped == "" && len(p.Self) > 0 {
		b.w("`perf record -F 999 -g -p <relay>` during an extra run of the %s (%s; not one of the measured runs: sampling slows it): %s s, CPU s relay / Postgres / harness / other: %s. The relay's activities, as shares of its samples (cumulative: a frame and everything it calls, so they overlap):\n\n",
			p.Load, p.Mode, num(p.Seconds), cpuCell(p.CPU))
		b.w("| activity | frame | share |\n|---|---|--:|\n")
		for _, a := range p.Areas {
			b.w("| %s | `%s` | %.1f %% |\n", a.What, a.Frame, a.Percent)
		}
		if len(p.DSOs) > 0 {
			b.w("\nBy binary: %s.\n", strings.Join(p.DSOs, "; "))
		}
		b.w("\nFlat profile (own samples), top entries:\n\n```\n%s\n```\n\nCumulative, top entries, without the frames every goroutine passes through:\n\n```\n%s\n```\n\n", strings.Join(p.Self, "\n"), strings.Join(p.Children, "\n"))
	} else if p != nil && p.Skipped != "" {
		b.w("No profile: %s.\n\n", p.Skipped)
	} else {
		b.w("No profile in this run.\n\n")
	}
}
