// Command testmatrix runs the given test packages once per PostgreSQL
// major version, each run on that version's server binaries
// (RELAY_TEST_PG_BINDIR), and prints one summary line per version at the
// end: passed, failed, skipped, with each skipped test's reason. It exits 1
// when any test failed. make test-matrix runs it:
//
//	testmatrix -packages './cdc/ ./faults/' -logs bin/matrix 14=/path/to/14/bin 17=/path/to/17/bin
//
// Each version's `go test -json` stream is kept in the logs directory.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// version is one major version to run and where its binaries are.
type version struct {
	major, binDir string
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("testmatrix", flag.ContinueOnError)
	fs.SetOutput(stderr)
	packages := fs.String("packages", "", "the packages to test, space-separated")
	logs := fs.String("logs", "bin/matrix", "directory for each version's go test -json output")
	goTestFlags := fs.String("flags", "-race -count=1 -p 2 -timeout 20m", "flags for go test")
	goCmd := fs.String("go", "go", "the go command")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	versions, err := parseVersions(fs.Args())
	if err == nil && strings.TrimSpace(*packages) == "" {
		err = errors.New("-packages is empty")
	}
	if err != nil {
		fmt.Fprintf(stderr, "testmatrix: %v\n", err)
		return 2
	}
	if err := os.MkdirAll(*logs, 0o755); err != nil {
		fmt.Fprintf(stderr, "testmatrix: %v\n", err)
		return 1
	}
	goArgs := append(append([]string{"test", "-json"}, strings.Fields(*goTestFlags)...), strings.Fields(*packages)...)
	var summary []string
	failed := false
	for _, v := range versions {
		name := serverVersion(v)
		fmt.Fprintf(stdout, "== PostgreSQL %s (%s)\n", name, v.binDir)
		began := time.Now()
		t, err := runVersion(v, *goCmd, goArgs, filepath.Join(*logs, "pg"+v.major+".json"), stdout)
		if err != nil {
			// go test could not run at all, or its output broke off.
			fmt.Fprintf(stdout, "testmatrix: PostgreSQL %s: %v\n", name, err)
			t.failed++
			t.failures = append(t.failures, err.Error())
		}
		failed = failed || t.failed > 0
		summary = append(summary, t.summary(name, time.Since(began))...)
	}
	fmt.Fprintln(stdout, "== summary")
	for _, l := range summary {
		fmt.Fprintln(stdout, l)
	}
	if failed {
		return 1
	}
	return 0
}

// parseVersions reads MAJOR=BINDIR arguments.
func parseVersions(args []string) ([]version, error) {
	if len(args) == 0 {
		return nil, errors.New("no versions: give MAJOR=BINDIR arguments, e.g. 17=/var/cache/outbox-relay/pg/17/native/bin")
	}
	var out []version
	for _, a := range args {
		major, dir, ok := strings.Cut(a, "=")
		if !ok || major == "" || dir == "" {
			return nil, fmt.Errorf("argument %q: want MAJOR=BINDIR", a)
		}
		out = append(out, version{major: major, binDir: dir})
	}
	return out, nil
}

// serverVersion is the version the binaries report, 17.10 say, or the
// major alone when they cannot tell.
func serverVersion(v version) string {
	out, err := exec.Command(filepath.Join(v.binDir, "postgres"), "--version").Output()
	if err != nil {
		return v.major
	}
	_, after, ok := strings.Cut(strings.TrimSpace(string(out)), "(PostgreSQL) ")
	if !ok || after == "" {
		return v.major
	}
	return strings.Fields(after)[0]
}

// runVersion runs go test on one version's binaries, keeps its JSON in
// logPath, and prints each package's result and each failure as they come.
func runVersion(v version, goCmd string, goArgs []string, logPath string, stdout io.Writer) (*tally, error) {
	t := newTally()
	logFile, err := os.Create(logPath)
	if err != nil {
		return t, err
	}
	defer logFile.Close()
	cmd := exec.Command(goCmd, goArgs...)
	cmd.Env = append(os.Environ(), "RELAY_TEST_PG_BINDIR="+v.binDir)
	cmd.Stderr = stdout
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		return t, err
	}
	if err := cmd.Start(); err != nil {
		return t, fmt.Errorf("go test: %w", err)
	}
	sc := bufio.NewScanner(io.TeeReader(pipe, logFile))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			fmt.Fprintln(stdout, sc.Text()) // not JSON: go test's own complaint
			continue
		}
		for _, l := range t.add(e) {
			fmt.Fprintln(stdout, l)
		}
	}
	scanErr := sc.Err()
	waitErr := cmd.Wait()
	var exit *exec.ExitError
	switch {
	case scanErr != nil:
		return t, fmt.Errorf("reading go test's output: %w", scanErr)
	case waitErr != nil && !errors.As(waitErr, &exit):
		return t, fmt.Errorf("go test: %w", waitErr)
	case waitErr != nil && t.failed == 0:
		return t, fmt.Errorf("go test exited %d with no test failed (see %s)", exit.ExitCode(), logPath)
	}
	return t, nil
}
