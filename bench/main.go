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
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
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
	step("latency", func() (err error) { res.Latency, err = b.latency(ctx); return })
	step("throughput", func() (err error) { res.Throughput, err = b.throughput(ctx); return })
	step("burst", func() (err error) { res.Burst, err = b.burst(ctx); return })
	step("backlog", func() (err error) { res.Backlog, res.SweepCost, err = b.backlog(ctx); return })
	step("wal", func() (err error) { res.WAL, err = b.wal(ctx); return })
	step("ordering", func() (err error) { res.Ordering, err = b.ordering(ctx); return })
	step("overload", func() (err error) { res.Overload, err = b.overload(ctx); return })
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
