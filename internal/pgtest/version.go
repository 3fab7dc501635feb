package pgtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// ServerMajor is the major version of the server binaries FindBinDir
// finds (14, 17, …), read from `postgres --version`, which the clusters of
// Start, StartT and StartPair run.
func ServerMajor() (int, error) {
	majorOnce.Do(func() { major, majorErr = readServerMajor() })
	return major, majorErr
}

var (
	majorOnce sync.Once
	major     int
	majorErr  error
)

func readServerMajor() (int, error) {
	dir, err := FindBinDir()
	if err != nil {
		return 0, err
	}
	out, err := exec.Command(filepath.Join(dir, "postgres"), "--version").Output()
	if err != nil {
		return 0, fmt.Errorf("pgtest: %s --version: %w", filepath.Join(dir, "postgres"), err)
	}
	return parseMajor(string(out))
}

// parseMajor reads 17 from "postgres (PostgreSQL) 17.10", 15 from
// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" and 18 from
// "postgres (PostgreSQL) 18beta1": the number after "(PostgreSQL)".
func parseMajor(version string) (int, error) {
	_, after, _ := strings.Cut(version, "(PostgreSQL) ")
	end := strings.IndexFunc(after, func(r rune) bool { return r < '0' || r > '9' })
	if end < 0 {
		end = len(after)
	}
	n, err := strconv.Atoi(after[:end])
	if err != nil {
		return 0, fmt.Errorf("pgtest: no major version in %q", strings.TrimSpace(version))
	}
	return n, nil
}

// SkipBelow skips the test when the server binaries are older than major,
// saying why: a feature the test needs arrived in that version. Without
// PostgreSQL installed it skips, or fails under CI, as StartT does.
func SkipBelow(t testing.TB, major int, why string) {
	t.Helper()
	have, err := ServerMajor()
	if errors.Is(err, errNoPostgres) && os.Getenv("CI") == "" {
		t.Skipf("pgtest: skipping: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if have < major {
		t.Skipf("needs PostgreSQL %d or later, the server here is %d: %s", major, have, why)
	}
}
