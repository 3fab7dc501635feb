// Command bench measures outbox-relay as its users would judge it: it
// starts a throwaway PostgreSQL, a receiving runner on loopback and the
// real binary, drives load, and writes docs/BENCHMARKS.md,
// docs/bench-results.json and docs/bench-latency.svg.
//
//	go run ./bench              # the full run (make bench), a few minutes
//	go run ./bench -quick       # about a minute, for development; prints only
//	go run ./bench -only=latency,wal
//	go run ./bench -only=burst     # the repeated burst and the load's insert rate
//
// Every child process and the cluster are stopped on exit, Ctrl-C included.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	if url := os.Getenv(floorURLEnv); url != "" { // the harness as the bare client (floor.go)
		if err := floorClient(url); err != nil {
			fmt.Fprintln(os.Stderr, "bench floor client:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// measures are the parts -only can select, in the order they run.
var measures = []string{"latency", "throughput", "burst", "backlog", "wal", "ordering", "overload", "profile"}

// plan is the size of every measure: the full run or -quick.
type plan struct {
	Quick bool `json:"quick"`

	LatencyRates    []int         `json:"latency_rates"`
	LatencyDuration time.Duration `json:"latency_duration_ns"`
	LatencyWarmup   time.Duration `json:"latency_warmup_ns"`
	LatencyConns    int           `json:"latency_conns"`

	BulkSizes   []int `json:"bulk_sizes"`
	SingleN     int   `json:"single_n"`
	SingleConns int   `json:"single_conns"`

	// BurstRuns deliveries of SingleN single-row txns by one relay;
	// BurstAlone runs of the same load with no relay; BurstWait is how
	// long a run waits for its events after the last commit.
	BurstRuns  int           `json:"burst_runs"`
	BurstAlone int           `json:"burst_alone_runs"`
	BurstWait  time.Duration `json:"burst_wait_ns"`

	BacklogN    int `json:"backlog_n"`
	SmallTableN int `json:"small_table_n"`
	// DrainLimit is a time-out, not a target: a drain slower than the
	// target misses it, one past the limit fails the run.
	DrainLimit   time.Duration `json:"drain_limit_ns"`
	SweepPending int           `json:"sweep_pending"`

	WALOutage    time.Duration `json:"wal_outage_ns"`
	WALBytesRate int           `json:"wal_bytes_per_second"`
	WALOutboxHz  int           `json:"wal_outbox_rate"`

	OrderedKeys int `json:"ordered_keys"`
	HotKeyRate  int `json:"hot_key_rate"`

	// The overload measure offers twice the median events/s of
	// OverloadCapacityRuns bursts for OverloadDuration, then
	// OverloadNormalRate for at least OverloadNormal, on an empty table and
	// on one holding OverloadWarmRows delivered rows.
	OverloadCapacityRuns int           `json:"overload_capacity_runs"`
	OverloadDuration     time.Duration `json:"overload_duration_ns"`
	OverloadNormal       time.Duration `json:"overload_normal_ns"`
	OverloadNormalRate   int           `json:"overload_normal_rate"`
	OverloadWarmRows     int           `json:"overload_warm_rows"`
}

func fullPlan() plan {
	return plan{
		LatencyRates:    []int{500, 1000, 2000, 5000},
		LatencyDuration: 10 * time.Second,
		LatencyWarmup:   time.Second,
		LatencyConns:    8,
		BulkSizes:       []int{20_000, 100_000},
		SingleN:         20_000,
		SingleConns:     8,
		BurstRuns:       10,
		BurstAlone:      4,
		BurstWait:       10 * time.Second,
		BacklogN:        1_000_000,
		SmallTableN:     10_000,
		DrainLimit:      300 * time.Second,
		SweepPending:    1_000,
		WALOutage:       60 * time.Second,
		WALBytesRate:    5 << 20,
		WALOutboxHz:     100,
		OrderedKeys:     1_000,
		HotKeyRate:      100,

		OverloadCapacityRuns: 3,
		OverloadDuration:     30 * time.Second,
		OverloadNormal:       30 * time.Second,
		OverloadNormalRate:   500,
		OverloadWarmRows:     200_000,
	}
}

func quickPlan() plan {
	p := fullPlan()
	p.Quick = true
	p.LatencyDuration = 3 * time.Second
	p.LatencyWarmup = 500 * time.Millisecond
	p.BulkSizes = []int{20_000}
	p.BurstRuns = 3
	p.BurstAlone = 2
	p.BacklogN = 100_000
	p.DrainLimit = 60 * time.Second
	p.WALOutage = 10 * time.Second
	p.OverloadCapacityRuns = 1
	p.OverloadDuration = 10 * time.Second
	p.OverloadNormal = 15 * time.Second
	p.OverloadWarmRows = 50_000
	return p
}

// options are the command line's flags.
type options struct {
	quick, profile, verbose bool
	only, out, render       string
	quiet                   time.Duration
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.BoolVar(&o.quick, "quick", false, "small sizes and short runs (about a minute); results are printed, docs/ is left alone unless -out is given")
	fs.StringVar(&o.only, "only", "", "comma-separated subset of "+strings.Join(measures, ",")+" (cost comes with throughput, sweep cost with backlog; statements and row versions per event with latency and throughput)")
	fs.StringVar(&o.out, "out", "", "directory for BENCHMARKS.md, bench-results.json and bench-latency.svg (default docs for a full run of every measure, none otherwise)")
	fs.BoolVar(&o.profile, "profile", true, "record a CPU profile of the relay with perf during an extra 20,000-row run, when perf is installed")
	fs.BoolVar(&o.verbose, "v", false, "log progress in more detail")
	fs.DurationVar(&o.quiet, "quiet", 10*time.Second, "before each measured run, wait up to this long for the machine to be less than 25 % busy with other work (0: don't); at most 90 s in all")
	fs.StringVar(&o.render, "render", "", "re-render BENCHMARKS.md and the chart from this bench-results.json, into its directory, without measuring")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.out == "" && !o.quick && o.only == "" {
		o.out = "docs"
	}
	return o, nil
}

// selectMeasures is the set -only names (every measure when empty), less
// the profile when -profile=false.
func selectMeasures(o options) (map[string]bool, error) {
	selected := map[string]bool{}
	if o.only == "" {
		for _, m := range measures {
			selected[m] = true
		}
	} else {
		for _, m := range strings.Split(o.only, ",") {
			m = strings.TrimSpace(m)
			if m == "cost" {
				m = "throughput"
			}
			if !slices.Contains(measures, m) {
				return nil, fmt.Errorf("-only: unknown measure %q (have %s)", m, strings.Join(measures, ", "))
			}
			selected[m] = true
		}
	}
	if !o.profile {
		delete(selected, "profile")
	}
	return selected, nil
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	if o.render != "" {
		return rerender(o.render)
	}
	p := fullPlan()
	if o.quick {
		p = quickPlan()
	}
	selected, err := selectMeasures(o)
	if err != nil {
		return err
	}

	started := time.Now()
	b, err := setup(ctx, p, stdout, o.verbose)
	if err != nil {
		return err
	}
	b.quiet = o.quiet
	defer b.close()

	res := &results{Plan: p, Started: started.UTC().Format(time.RFC3339)}
	res.Machine = b.machine(ctx)
	res.Settings = b.settings(ctx)
	b.measure(ctx, selected, res)
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("interrupted: %w", err)
	}
	res.Stream = b.stream
	res.Relays = b.relays
	res.Seconds = time.Since(started).Seconds()

	report := renderMarkdown(res)
	fmt.Fprintln(stdout)
	fmt.Fprint(stdout, report)
	if o.out != "" {
		if err := res.write(o.out, report); err != nil {
			return err
		}
		b.logf("wrote %s/BENCHMARKS.md, bench-results.json and bench-latency.svg", o.out)
	}
	b.logf("total %s", time.Since(started).Round(time.Second))
	if len(res.Errors) > 0 {
		return errors.New(strings.Join(res.Errors, "; "))
	}
	return nil
}

// measure runs the selected measures in order. Each records its own
// failure and the rest still run: a partial report beats none. Only a
// cancelled context stops the run.
func (b *bench) measure(ctx context.Context, selected map[string]bool, res *results) {
	step := func(name string, f func() error) {
		if !selected[name] || ctx.Err() != nil {
			return
		}
		b.logf("== %s", name)
		t := time.Now()
		if err := f(); err != nil {
			if ctx.Err() != nil {
				return
			}
			b.logf("%s failed: %v", name, err)
			res.Errors = append(res.Errors, fmt.Sprintf("%s: %v", name, err))
		}
		b.logf("%s took %s", name, time.Since(t).Round(time.Second))
	}
	step("latency", func() (err error) {
		if res.Latency, err = b.latency(ctx); err != nil {
			return err
		}
		res.Floor, err = b.floor(ctx, floorRate, b.plan.LatencyDuration)
		return err
	})
	step("throughput", func() (err error) { res.Throughput, err = b.throughput(ctx); return })
	step("burst", func() (err error) { res.Burst, err = b.burst(ctx); return })
	step("backlog", func() (err error) { res.Backlog, res.SweepCost, err = b.backlog(ctx); return })
	step("wal", func() (err error) { res.WAL, err = b.wal(ctx); return })
	step("ordering", func() (err error) { res.Ordering, err = b.ordering(ctx); return })
	step("overload", func() (err error) { res.Overload, err = b.overload(ctx); return })
	step("profile", func() (err error) { res.Profile, err = b.profile(ctx); return })
}

// rerender writes the report again from saved results, so a change to the
// report's wording does not cost a whole run.
func rerender(path string) error {
	j, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var res results
	if err := json.Unmarshal(j, &res); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return res.write(filepath.Dir(path), renderMarkdown(&res))
}
