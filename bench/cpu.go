package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

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

// ownCPU is this process's user plus system time.
func ownCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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
	s.self = ownCPU()
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

// perEventMicros is CPU seconds per committed event, in µs.
func perEventMicros(seconds float64, events int) float64 {
	return 1e6 * seconds / float64(max(events, 1))
}

// cpuGoal judges the CPU per event of who, the relay or PostgreSQL, at
// 500 events/s by the stream.
func cpuGoal(who string) func(*results, goal) target {
	return func(r *results, g goal) target { return r.cpuTarget(who, g.limit) }
}

func (r *results) cpuTarget(who string, limit float64) target {
	t := unmeasured(who+" CPU per event at 500 events/s (stream)", fmt.Sprintf("≤ %.0f µs", limit))
	get := func(c cpuUse) float64 { return c.Relay }
	if who == "PostgreSQL" {
		get = func(c cpuUse) float64 { return c.Postgres }
		t.What += ", the load's inserts included"
	}
	if l := r.latencyOf(streamMode.Name, 500); l != nil && l.Load.Committed > 0 {
		v := perEventMicros(get(l.CPU), l.Load.Committed)
		t.Measured, t.Verdict = fmt.Sprintf("%.0f µs", v), verdictAtMost(v, limit)
	}
	return t
}
