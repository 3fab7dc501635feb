package faults

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

var recordMu sync.Mutex

// record appends a result line to $RELAY_FAULTS_OUT (JSON lines), from
// which docs/RELIABILITY.md's table is written.
func record(t *testing.T, fault string, r result, extra map[string]string) {
	out := os.Getenv("RELAY_FAULTS_OUT")
	if out == "" {
		return
	}
	line := map[string]any{"fault": fault, "test": t.Name(), "events": r.Events, "lost": r.Lost, "duplicates": r.Duplicates, "full": full}
	if major, err := pgtest.ServerMajor(); err == nil {
		line["postgres"] = major
	}
	if r.OrderViolations != nil {
		line["order_violations"] = *r.OrderViolations
	}
	for k, v := range extra {
		line[k] = v
	}
	b, _ := json.Marshal(line)
	recordMu.Lock()
	defer recordMu.Unlock()
	f, err := os.OpenFile(filepath.Clean(out), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Errorf("record: %v", err)
		return
	}
	defer f.Close()
	_, _ = f.Write(append(b, '\n'))
}
