package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// A run as go test -json writes it: passes, a skip with its reason, a
// failure, and a package that fails outside any test.
const stream = `{"Action":"start","Package":"github.com/outbox-relay/outbox-relay/cdc"}
{"Action":"run","Package":"github.com/outbox-relay/outbox-relay/cdc","Test":"TestA"}
{"Action":"output","Package":"github.com/outbox-relay/outbox-relay/cdc","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"pass","Package":"github.com/outbox-relay/outbox-relay/cdc","Test":"TestA","Elapsed":0.1}
{"Action":"run","Package":"github.com/outbox-relay/outbox-relay/cdc","Test":"TestOn17"}
{"Action":"output","Package":"github.com/outbox-relay/outbox-relay/cdc","Test":"TestOn17","Output":"=== RUN   TestOn17\n"}
{"Action":"output","Package":"github.com/outbox-relay/outbox-relay/cdc","Test":"TestOn17","Output":"=== PAUSE TestOn17\n"}
{"Action":"output","Package":"github.com/outbox-relay/outbox-relay/cdc","Test":"TestOn17","Output":"    failover_test.go:170: needs PostgreSQL 17 or later, the server here is 15\n"}
{"Action":"output","Package":"github.com/outbox-relay/outbox-relay/cdc","Test":"TestOn17","Output":"--- SKIP: TestOn17 (0.00s)\n"}
{"Action":"skip","Package":"github.com/outbox-relay/outbox-relay/cdc","Test":"TestOn17","Elapsed":0}
{"Action":"run","Package":"github.com/outbox-relay/outbox-relay/cdc","Test":"TestB"}
{"Action":"output","Package":"github.com/outbox-relay/outbox-relay/cdc","Test":"TestB","Output":"    cdc_test.go:9: got 1, want 2\n"}
{"Action":"fail","Package":"github.com/outbox-relay/outbox-relay/cdc","Test":"TestB","Elapsed":0.2}
{"Action":"output","Package":"github.com/outbox-relay/outbox-relay/cdc","Output":"FAIL\n"}
{"Action":"fail","Package":"github.com/outbox-relay/outbox-relay/cdc","Elapsed":3.5}
{"Action":"run","Package":"github.com/outbox-relay/outbox-relay/relay","Test":"TestC"}
{"Action":"pass","Package":"github.com/outbox-relay/outbox-relay/relay","Test":"TestC","Elapsed":0.1}
{"Action":"output","Package":"github.com/outbox-relay/outbox-relay/relay","Output":"goleak: errors on successful test run: found unexpected goroutines\n"}
{"Action":"fail","Package":"github.com/outbox-relay/outbox-relay/relay","Elapsed":1.5}
`

func TestTally(t *testing.T) {
	tl := newTally()
	var printed []string
	for _, line := range strings.Split(strings.TrimSpace(stream), "\n") {
		var e event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatal(err)
		}
		printed = append(printed, tl.add(e)...)
	}
	if tl.passed != 2 || tl.failed != 2 || tl.skipped != 1 {
		t.Errorf("passed %d, failed %d, skipped %d; want 2, 2 (a test, a package outside its tests), 1", tl.passed, tl.failed, tl.skipped)
	}
	got := strings.Join(tl.summary("17.10", 95*time.Second), "\n")
	for _, want := range []string{
		"PostgreSQL 17.10: 2 passed, 2 failed, 1 skipped (1m35s)",
		"skipped cdc.TestOn17: needs PostgreSQL 17 or later, the server here is 15",
		"FAILED cdc.TestB",
		"FAILED relay (outside any test)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("summary lacks %q:\n%s", want, got)
		}
	}
	out := strings.Join(printed, "\n")
	for _, want := range []string{"--- FAIL: cdc TestB", "got 1, want 2", "FAIL cdc 3.5s", "goleak: errors", "FAIL relay 1.5s"} {
		if !strings.Contains(out, want) {
			t.Errorf("printed lines lack %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "FAILED") || strings.Contains(out, "=== RUN") {
		t.Errorf("printed lines hold more than results and failures:\n%s", out)
	}
}

func TestParseVersions(t *testing.T) {
	v, err := parseVersions([]string{"14=/a/bin", "17=/b/bin"})
	if err != nil || len(v) != 2 || v[1] != (version{major: "17", binDir: "/b/bin"}) {
		t.Errorf("parseVersions = %v, %v", v, err)
	}
	for _, bad := range [][]string{nil, {"17"}, {"=/a"}, {"17="}} {
		if _, err := parseVersions(bad); err == nil {
			t.Errorf("parseVersions(%q) accepted", bad)
		}
	}
}
