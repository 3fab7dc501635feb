package main

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"strings"
)

// machine describes where the figures come from.
type machine struct {
	CPUs      int     `json:"cpus"`
	CPUModel  string  `json:"cpu_model"`
	MemoryGiB float64 `json:"memory_gib"`
	Kernel    string  `json:"kernel"`
	Go        string  `json:"go"`
	Postgres  string  `json:"postgres"`
	Relay     string  `json:"relay_version"`
	Commit    string  `json:"commit"`
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
	// git finds the repository from the working directory up.
	if o, err := exec.CommandContext(ctx, "git", "describe", "--always", "--dirty").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(o))
	}
	return m
}

// settings are the server and relay settings that shape the figures.
func (b *bench) settings(ctx context.Context) map[string]string {
	s := map[string]string{}
	for _, name := range []string{"fsync", "synchronous_commit", "full_page_writes", "shared_buffers", "wal_level", "max_wal_size", "checkpoint_timeout", "wal_writer_delay", "autovacuum", "shared_preload_libraries"} {
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
