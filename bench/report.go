package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// results is everything a run found; it is written as bench-results.json.
type results struct {
	Started  string            `json:"started"`
	Seconds  float64           `json:"seconds"`
	Plan     plan              `json:"plan"`
	Machine  machine           `json:"machine"`
	Settings map[string]string `json:"settings"`
	Stream   streamState       `json:"stream"`

	Latency    []latencyResult    `json:"latency"`
	Floor      []floorResult      `json:"floor,omitempty"`
	Throughput []throughputResult `json:"throughput"`
	Burst      *burstResult       `json:"burst,omitempty"`
	Backlog    []backlogResult    `json:"backlog"`
	SweepCost  []sweepCost        `json:"sweep_cost"`
	WAL        *walResult         `json:"wal,omitempty"`
	Ordering   *orderingResult    `json:"ordering,omitempty"`
	Overload   *overloadResult    `json:"overload,omitempty"`
	Profile    *profileResult     `json:"profile,omitempty"`
	Relays     []relayStats       `json:"relays"`
	Errors     []string           `json:"errors,omitempty"`
}

func (r *results) write(dir, markdown string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	j, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"BENCHMARKS.md":      []byte(markdown),
		"bench-results.json": append(j, '\n'),
		"bench-latency.svg":  []byte(latencyChart(r)),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// num formats a figure with sensible precision.
func num(v float64) string {
	switch a := math.Abs(v); {
	case a == 0:
		return "0"
	case a < 1:
		return fmt.Sprintf("%.3f", v)
	case a < 10:
		return fmt.Sprintf("%.2f", v)
	case a < 100:
		return fmt.Sprintf("%.1f", v)
	default:
		return thousands(int(math.Round(v)))
	}
}

// mdTable is a markdown table: its header and alignment rows, then one row
// per item: row's, or skippedRow for a skippable item that was skipped.
func mdTable[T any](header, align string, items []T, row func(T) string) string {
	cols := strings.Count(header, "|") - 1
	var b strings.Builder
	b.WriteString(header)
	b.WriteString(align)
	for _, it := range items {
		if s, ok := any(it).(skippable); ok {
			if first, second, skipped := s.skipped(); skipped {
				b.WriteString(skippedRow(cols, first, second))
				continue
			}
		}
		b.WriteString(row(it))
	}
	return b.String()
}

// skippable is a result of a run that needs the stream: skipped reports
// whether the stream was not there for it, and the first two cells of its
// row.
type skippable interface {
	skipped() (first, second string, ok bool)
}

// skippedRow is the row of a run the stream was not there for: its first
// two cells, the reason, then empty cells up to cols.
func skippedRow(cols int, first, second string) string {
	return "| " + first + " | " + second + " | skipped: stream not available |" + strings.Repeat(" |", cols-3) + "\n"
}

func cpuCell(c cpuUse) string {
	return fmt.Sprintf("%s / %s / %s / %s", num(c.Relay), num(c.Postgres), num(c.Bench), num(c.Other))
}

// handOffNote is why the stream hands ids off at each commit rather than
// after a pause in the stream.
const handOffNote = `## Hand-off at commit, not after a pause

The stream hands a transaction's ids to the deliverer at its commit, and the hand-off goroutine takes whatever has gathered each time it is free, so bursts batch by themselves. Waiting for a pause in the stream instead was measured before it was removed (a cdc benchmark with the real claim statement; 2 vCPU, PostgreSQL 15, synchronous commits; from the start of an INSERT to its id being claimed). At a steady 500 single-row transactions a second, handing off at commit had a p50 of 0.55 ms and a p99 of 5.5 ms; waiting for a 250 µs or 1 ms pause, 1.7–1.8 ms and 7.7–8.9 ms, since a timer costs every lone insert a millisecond or more; waiting for a 5 ms pause, 104 ms and 202 ms, since a steady rate denser than the pause never pauses and ids wait for a full batch. In bursts (8 writers flat out, the machine saturated; 4 runs each) both batched, 13–38 ids a claim at commit against 57–78 after a 1 ms pause, with overlapping latencies (p99 53–116 ms against 39–94 ms): no gain worth a millisecond on every quiet insert.

`

// thousands formats n with commas: 20,000.
func thousands(n int) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + thousands(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// markdown is docs/BENCHMARKS.md as it is written, one section at a time.
type markdown struct{ strings.Builder }

func (b *markdown) w(format string, args ...any) { fmt.Fprintf(b, format, args...) }

// renderMarkdown is docs/BENCHMARKS.md.
func renderMarkdown(r *results) string {
	var b markdown
	for _, section := range []func(*markdown, *results){
		mdHeader, mdMachine, mdLatency, mdThroughput, mdBacklog, mdCost, mdWAL, mdOrdering, mdOverload, mdProfile, mdReproduce,
	} {
		section(&b, r)
	}
	return b.String()
}

// mdHeader is the title, the run's provenance and warnings, and the targets.
func mdHeader(b *markdown, r *results) {
	m := r.Machine
	b.w("# Benchmarks\n\n")
	b.w("Generated by `make bench` (`go run ./bench`) on %s at commit `%s`; the run took %s. ",
		r.Started[:10], m.Commit, time.Duration(r.Seconds*float64(time.Second)).Round(time.Second))
	b.w("Do not edit by hand: run it again. Raw figures: [bench-results.json](bench-results.json).\n\n")
	if !r.Stream.Available {
		b.w("> **The stream was not available in this build** (%s). Stream figures are missing and the targets are judged on what ran.\n\n", r.Stream.Reason)
	}
	if len(r.Errors) > 0 {
		b.w("> **Errors during the run:** %s\n\n", strings.Join(r.Errors, "; "))
	}

	b.w("## Targets: latency, throughput, ordering, overload\n\n")
	b.w("%s", targetsTable(r, summaryTargets))
	b.w("\n## Targets: the stream at its limit\n\n")
	b.w("%s", targetsTable(r, limitTargets))
}

// mdMachine describes the machine and the settings every run shares.
func mdMachine(b *markdown, r *results) {
	m := r.Machine
	b.w("\n## Machine and settings\n\n")
	b.w("- %d CPUs (%s), %.1f GiB memory, Linux %s — shared by PostgreSQL, the relay, and the harness (runner and load generator); loopback only.\n", m.CPUs, m.CPUModel, m.MemoryGiB, m.Kernel)
	b.w("- %s, PostgreSQL %s, `%s`.\n", m.Go, m.Postgres, m.Relay)
	b.w("- PostgreSQL is a throwaway cluster from `internal/pgtest`: ")
	var keys []string
	for k := range r.Settings {
		if strings.HasPrefix(k, "server.") {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for i, k := range keys {
		if i > 0 {
			b.w(", ")
		}
		b.w("`%s=%s`", strings.TrimPrefix(k, "server."), r.Settings[k])
	}
	b.w(". The benchmark databases set `synchronous_commit = on` (`ALTER DATABASE`, which outranks the server's command line), so every commit — the load's and the relay's — waits for its WAL write as an application's would, and the walsender sees it at once (with the cluster's `off`, a commit reaches the stream only at the WAL writer's next flush, up to 3 × `wal_writer_delay` later).\n")
	b.w("- **`fsync=off`**: a commit does not wait for the disk. On real storage add the device's flush time (about 0.1–2 ms on SSDs) to every commit — the application's and each outcome `UPDATE` of the relay — so single-row insert rates and the relay's throughput would be lower; on loopback with `fsync=off` the figures show the CPU cost of the relay and the database.\n")
	b.w("- The relay is the real binary (`go build ./cmd/outbox-relay`) run as a child process with its defaults (`RELAY_CONCURRENCY=16`, `RELAY_BATCH_SIZE=100`, `RELAY_HTTP_TIMEOUT=10s`), `RELAY_LOG_LEVEL=warn`, and `RELAY_LISTEN_ADDR` on 127.0.0.1 for `/metrics`. **stream** is `RELAY_CDC=on`, `RELAY_SWEEP_INTERVAL=1m` (only the stream can be fast); **sweep-only** is `RELAY_CDC=off`, `RELAY_SWEEP_INTERVAL=1s`.\n")
	if strings.Contains(r.Settings["server.shared_preload_libraries"], "pg_stat_statements") {
		b.w("- The relay logs in as a role of its own, `%s` (a superuser, as `postgres` is), so that `pg_stat_statements` can tell its statements from the load's.\n", relayRole)
	}
	b.w("- Before a streaming relay stops, the bench runs `CHECKPOINT` and waits until the slot's `restart_lsn` has passed it. PostgreSQL moves `restart_lsn` only when the session decodes a running-transactions record (written at a checkpoint, or every 15 s while there is activity), so without this the next relay on the same database first re-decoded the whole previous load: in one run, 8 CPU-seconds of PostgreSQL and 2,546 instead of about 5,000 events/s for 20,000 single-row commits. A relay restarted in production pays the same once, bounded by those 15 s of WAL.\n")
	b.w("- The runner is a `net/http` server in the harness process on 127.0.0.1: it reads the body, notes the receipt time under the `Idempotency-Key` (the event id) and answers 204.\n")
	b.w("- CPU columns split the CPU seconds of each run between the relay, PostgreSQL, the harness (runner and load generator) and *other* processes; \"machine busy\" is the share of all %d CPUs in use. The machine may be shared with other work: a large *other* share means the run competed for CPU and its figures are pessimistic.\n", m.CPUs)
}

// mdReproduce ends the report with the hand-off finding and how to run it again.
func mdReproduce(b *markdown, r *results) {
	b.w("%s", handOffNote)
	b.w("## Reproduce\n\n")
	b.w("```\nmake bench                                  # this report: docs/BENCHMARKS.md, bench-results.json, bench-latency.svg\ngo run ./bench -quick                       # about a minute, smaller sizes; prints the report, writes nothing\ngo run ./bench -only=latency,wal -out /tmp/b # a subset, written elsewhere\ngo run ./bench -only=burst                  # the repeated burst and the load's insert rate alone\n```\n\n")
	b.w("Needs the PostgreSQL server binaries (as `make test` does) and, for the profile, `perf`.\n")
}
