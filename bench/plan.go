package main

import (
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"
)

// What a run measures and how big: the measures, the sizes of a full run
// and of -quick, and the command line that chooses between them.

// measures are the parts -only can select, in the order they run.
var measures = []string{"latency", "throughput", "burst", "backlog", "wal", "ordering", "overload"}

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
	quick, verbose    bool
	only, out, render string
	quiet             time.Duration
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.BoolVar(&o.quick, "quick", false, "small sizes and short runs (about a minute); results are printed, docs/ is left alone unless -out is given")
	fs.StringVar(&o.only, "only", "", "comma-separated subset of "+strings.Join(measures, ",")+" (cost comes with throughput, sweep cost with backlog, statements and row versions per event with latency)")
	fs.StringVar(&o.out, "out", "", "directory for BENCHMARKS.md, bench-results.json and bench-latency.svg (default docs for a full run of every measure, none otherwise)")
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

// selectMeasures is the set -only names, every measure when empty.
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
	return selected, nil
}
