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
	res := &profileResult{Mode: m.Name, Load: load{"bulk", n}.String()}
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
	rec := exec.Command(perf, "record", "-F", "999", "-g", "-p", fmt.Sprint(p.pid()), "-o", data)
	recOut := &relaytest.Buffer{Limit: 8 << 10}
	rec.Stdout, rec.Stderr = recOut, recOut
	if err := rec.Start(); err != nil {
		res.Skipped = "perf record: " + err.Error()
		return res, nil
	}
	recDone := make(chan error, 1)
	go func() { recDone <- rec.Wait() }()
	stopped := false
	stopRec := func() error {
		stopped = true
		_ = rec.Process.Signal(syscall.SIGINT)
		select {
		case err := <-recDone:
			return err
		case <-time.After(30 * time.Second):
			_ = rec.Process.Kill()
			return errors.New("perf record did not stop")
		}
	}
	defer func() {
		if !stopped {
			_ = stopRec()
		}
	}()
	if err := sleep(ctx, 500*time.Millisecond); err != nil { // let perf attach
		return res, err
	}

	b.waitQuiet(ctx, b.quiet)
	b.runner.Reset(false, 0)
	cpu0 := b.cpuNow(p)
	t := now()
	if err := bulk(ctx, db.pool, n); err != nil {
		return res, err
	}
	ok, err := b.runner.WaitDistinct(ctx, n, 2*time.Minute)
	if err != nil {
		return res, err
	}
	res.Seconds = float64(since(b.runner.Counts().Last)-t) / 1e9
	res.CPU = cpuBetween(cpu0, b.cpuNow(p))
	if err := stopRec(); err != nil {
		// perf exits non-zero on SIGINT on some versions; the data is
		// what matters.
		b.debugf("perf record: %v\n%s", err, recOut.String())
	}
	if !ok {
		return res, fmt.Errorf("profile run: not every event delivered")
	}

	report := func(args ...string) ([]string, error) {
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
	self, err := report("--no-children", "--percent-limit", "0.8")
	if err != nil {
		return res, err
	}
	res.Self = self[:min(len(self), 20)]
	children, err := report("--children", "--percent-limit", "0.3")
	if err != nil {
		return res, err
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
	b.logf("profile: %d areas, %d self entries", len(res.Areas), len(res.Self))
	return res, nil
}
