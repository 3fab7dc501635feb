package main

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Time    time.Time
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

// tally counts the results of one version's run: tests and subtests
// passed, failed and skipped, each skip with the reason the test gave, and
// packages that failed outside any test (a build error, a leak found by
// TestMain, a timeout).
type tally struct {
	passed, failed, skipped int
	skips                   []skip
	failures                []string // "package.Test" or "package (outside any test)"
	output                  map[string][]string
	failedTest              map[string]bool // packages with a failed test
}

type skip struct {
	pkg, test, reason string
}

func newTally() *tally {
	return &tally{output: map[string][]string{}, failedTest: map[string]bool{}}
}

// add takes one event. It returns the lines worth printing as the run
// goes: a package's result, and a failed test's output.
func (t *tally) add(e event) []string {
	key := e.Package + "\x00" + e.Test
	switch e.Action {
	case "output", "build-output":
		t.output[key] = append(t.output[key], strings.TrimRight(e.Output, "\n"))
		return nil
	case "pass", "fail", "skip":
	default:
		return nil
	}
	lines := t.output[key]
	delete(t.output, key)
	if e.Test == "" {
		return t.packageDone(e, lines)
	}
	switch e.Action {
	case "pass":
		t.passed++
	case "skip":
		t.skipped++
		t.skips = append(t.skips, skip{pkg: short(e.Package), test: e.Test, reason: skipReason(lines)})
	case "fail":
		t.failed++
		t.failedTest[e.Package] = true
		t.failures = append(t.failures, short(e.Package)+"."+e.Test)
		return append([]string{fmt.Sprintf("--- FAIL: %s %s", short(e.Package), e.Test)}, indent(lines)...)
	}
	return nil
}

// packageDone reports a package's end; a package that failed with no test
// failed is a failure of its own, shown with its last output lines.
func (t *tally) packageDone(e event, lines []string) []string {
	status := "ok  "
	if e.Action == "fail" {
		status = "FAIL"
	}
	out := []string{fmt.Sprintf("%s %s %.1fs", status, short(e.Package), e.Elapsed)}
	if e.Action == "fail" && !t.failedTest[e.Package] {
		t.failed++
		t.failures = append(t.failures, short(e.Package)+" (outside any test)")
		if len(lines) > 30 {
			lines = lines[len(lines)-30:]
		}
		out = append(out, indent(lines)...)
	}
	return out
}

// fileLine is the "file_test.go:123: " that t.Skip puts before its
// message.
var fileLine = regexp.MustCompile(`^\s*[\w.-]+\.go:\d+: `)

// skipReason is what a skipped test said, without the framework's lines.
func skipReason(lines []string) string {
	var said []string
	for _, l := range lines {
		trimmed := strings.TrimSpace(l)
		if trimmed == "" || strings.HasPrefix(trimmed, "=== ") || strings.HasPrefix(trimmed, "--- ") {
			continue
		}
		said = append(said, fileLine.ReplaceAllString(l, ""))
	}
	if len(said) == 0 {
		return "(no reason given)"
	}
	return strings.Join(said, " ")
}

func indent(lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = "    " + l
	}
	return out
}

// short drops the module path: cdc rather than
// github.com/outbox-relay/outbox-relay/cdc.
func short(pkg string) string {
	const module = "github.com/outbox-relay/outbox-relay/"
	return strings.TrimPrefix(pkg, module)
}

// summary is the version's line, then one line per skipped test and per
// failure.
func (t *tally) summary(version string, took time.Duration) []string {
	out := []string{fmt.Sprintf("PostgreSQL %s: %d passed, %d failed, %d skipped (%s)",
		version, t.passed, t.failed, t.skipped, took.Round(time.Second))}
	skips := append([]skip(nil), t.skips...)
	sort.Slice(skips, func(i, j int) bool {
		if skips[i].pkg != skips[j].pkg {
			return skips[i].pkg < skips[j].pkg
		}
		return skips[i].test < skips[j].test
	})
	for _, s := range skips {
		out = append(out, fmt.Sprintf("    skipped %s.%s: %s", s.pkg, s.test, s.reason))
	}
	for _, f := range t.failures {
		out = append(out, "    FAILED "+f)
	}
	return out
}
