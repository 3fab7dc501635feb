package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

// The floor is what a Go process spends to send one POST per event at a
// steady rate and do nothing else: net/http's client, the runtime's
// wake-ups between events, the system calls. The relay's CPU per event at
// the same rate can only be judged against it, since on a virtual
// machine a wake-up alone costs tens of µs. The harness runs itself again
// as the client, with these variables, so that its CPU is its own.
const (
	floorURLEnv     = "BENCH_FLOOR_URL"
	floorRateEnv    = "BENCH_FLOOR_RATE"
	floorSecondsEnv = "BENCH_FLOOR_SECONDS"
	// floorRate is the rate of the relay CPU target (cpu.go).
	floorRate = 500
)

// floorResult is one run of the bare client.
type floorResult struct {
	Rate       int     `json:"rate"`
	GOMAXPROCS string  `json:"gomaxprocs"` // "1", or "default"
	Posts      int     `json:"posts"`
	Received   int     `json:"received"` // by the runner, warm-up included
	Seconds    float64 `json:"seconds"`
	CPUSeconds float64 `json:"cpu_seconds"`
}

// MicrosPerPost is the client's CPU per POST.
func (f floorResult) MicrosPerPost() float64 { return perEventMicros(f.CPUSeconds, f.Posts) }

// floor runs the bare client at rate against the runner, on one P (as the
// relay runs at that rate) and on the runtime's default.
func (b *bench) floor(ctx context.Context, rate int, d time.Duration) ([]floorResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("floor: %w", err)
	}
	var out []floorResult
	for _, procs := range []string{"1", "default"} {
		b.waitQuiet(ctx, b.quiet)
		b.runner.Reset(false, 0)
		cmd := exec.CommandContext(ctx, exe)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), floorURLEnv + "=" + b.runner.URL(),
			floorRateEnv + "=" + strconv.Itoa(rate), floorSecondsEnv + "=" + strconv.Itoa(int(d.Seconds()))}
		if procs != "default" {
			cmd.Env = append(cmd.Env, "GOMAXPROCS="+procs)
		}
		cmd.Stderr = os.Stderr
		j, err := cmd.Output()
		if err != nil {
			return out, fmt.Errorf("floor client (GOMAXPROCS %s): %w", procs, err)
		}
		var r floorResult
		if err := json.Unmarshal(j, &r); err != nil {
			return out, fmt.Errorf("floor client (GOMAXPROCS %s): %w", procs, err)
		}
		r.Rate, r.GOMAXPROCS, r.Received = rate, procs, b.runner.Counts().Requests
		if r.Received < r.Posts {
			return out, fmt.Errorf("floor client (GOMAXPROCS %s): the runner got %d of %d POSTs", procs, r.Received, r.Posts)
		}
		b.logf("floor, GOMAXPROCS %s: %d POSTs at %d/s, %.0f µs CPU each", procs, r.Posts, rate, r.MicrosPerPost())
		out = append(out, r)
	}
	return out, nil
}

// floorClient is the harness run again as the bare client: one POST of a
// typical event every 1/rate s for a second of warm-up, then for the
// measured seconds; it prints a floorResult.
func floorClient(url string) error {
	rate, err := strconv.Atoi(os.Getenv(floorRateEnv))
	if err != nil || rate <= 0 {
		return fmt.Errorf("%s: %q", floorRateEnv, os.Getenv(floorRateEnv))
	}
	secs, err := strconv.Atoi(os.Getenv(floorSecondsEnv))
	if err != nil || secs <= 0 {
		return fmt.Errorf("%s: %q", floorSecondsEnv, os.Getenv(floorSecondsEnv))
	}
	// As the relay's client: keep-alive, HTTP/2 where offered.
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, ForceAttemptHTTP2: true}}
	every := time.Second / time.Duration(rate)
	post := func(i int) error {
		key := fmt.Sprintf("floor-%08d", i)
		body := fmt.Appendf(nil, `{"id":%q,"type":"file.finalized","payload":{"file":42,"owner":"someone@example.com","size":1048576},"created_at":"2026-05-01T12:30:45.123456Z","attempt":1}`, key)
		req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "outbox-relay-floor")
		req.Header.Set("Idempotency-Key", key)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("runner answered %s", resp.Status)
		}
		return nil
	}
	warm, n := rate, rate*secs
	next := time.Now()
	var start time.Time
	var cpu0 time.Duration
	for i := range warm + n {
		if i == warm {
			start, cpu0 = time.Now(), ownCPU()
		}
		next = next.Add(every)
		time.Sleep(time.Until(next))
		if err := post(i); err != nil {
			return err
		}
	}
	return json.NewEncoder(os.Stdout).Encode(floorResult{
		Posts: n, Seconds: time.Since(start).Seconds(), CPUSeconds: (ownCPU() - cpu0).Seconds(),
	})
}

// ownCPU is this process's user plus system time.
func ownCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// floorAt is the bare client's run at rate with that GOMAXPROCS.
func (r *results) floorAt(rate int, procs string) *floorResult {
	for i, f := range r.Floor {
		if f.Rate == rate && f.GOMAXPROCS == procs && f.Posts > 0 {
			return &r.Floor[i]
		}
	}
	return nil
}

// mdFloor says what the bare client cost, next to the relay at its rate.
func mdFloor(b *markdown, r *results) {
	one, all := r.floorAt(floorRate, "1"), r.floorAt(floorRate, "default")
	l := r.latencyOf(streamMode.Name, floorRate)
	if one == nil || l == nil || l.Load.Committed == 0 {
		return
	}
	b.w("\n### The floor at 500 events/s\n\n")
	b.w("What a Go process spends to do nothing but send one POST per event at that rate: the harness runs itself again as a bare `net/http` client (keep-alive, a typical event's body and headers, no database, no signing) that POSTs to the same runner every 2 ms for %.0f s after a second's warm-up, and reads its own CPU time. It costs %.0f µs per POST on one P", one.Seconds, one.MicrosPerPost())
	if all != nil {
		b.w(" and %.0f µs on the runtime's default Ps", all.MicrosPerPost())
	}
	relay := perEventMicros(l.CPU.Relay, l.Load.Committed)
	b.w(". The relay spent %.0f µs per event at the same rate: that POST, plus receiving the event from the replication stream and its share of an outcome `UPDATE`, %.0f µs more than the floor. Most of the floor is waking up: the runtime's monitor thread and the thread that waits for the network sleep and wake around every event, and on a virtual machine each of those switches costs the hypervisor's work too; so the relay's CPU per event at a low rate says as much about the machine as about the relay.\n", relay, relay-one.MicrosPerPost())
}
