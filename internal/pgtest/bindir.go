package pgtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// FindBinDir returns the directory holding initdb and pg_ctl: the one in
// RELAY_TEST_PG_BINDIR when set, else it looks on PATH, then at
// `pg_config --bindir`, then at the newest /usr/lib/postgresql/*/bin,
// because Debian installs the server binaries there without putting them
// on PATH.
func FindBinDir() (string, error) {
	if dir := os.Getenv(EnvBinDir); dir != "" {
		// Named on purpose, so a wrong one fails rather than skips.
		if !hasServerBinaries(dir) {
			return "", fmt.Errorf("pgtest: %s=%s holds no initdb, pg_ctl and postgres", EnvBinDir, dir)
		}
		return dir, nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		// PATH often holds symlinks (e.g. /usr/local/bin/initdb); the real
		// directory is where postgres itself lives too.
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		if dir := filepath.Dir(p); hasServerBinaries(dir) {
			return dir, nil
		}
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		// Debian's pg_config comes with libpq-dev and may name a bindir
		// whose server binaries are not installed, so check.
		if dir := strings.TrimSpace(string(out)); hasServerBinaries(dir) {
			return dir, nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(matches, func(i, j int) bool { return majorVersion(matches[i]) > majorVersion(matches[j]) })
	for _, m := range matches {
		if dir := filepath.Dir(m); hasServerBinaries(dir) {
			return dir, nil
		}
	}
	return "", fmt.Errorf("%w: searched PATH, `pg_config --bindir` and /usr/lib/postgresql/*/bin; "+
		"install the server (Debian/Ubuntu: apt-get install postgresql) or set %s or %s", errNoPostgres, EnvBinDir, EnvDatabaseURL)
}

func hasServerBinaries(dir string) bool {
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return false
		}
	}
	return true
}

// majorVersion reads 15 from /usr/lib/postgresql/15/bin/initdb (9.6 reads
// as 9), so that 15 sorts above 9.6, which a string sort would not do.
func majorVersion(initdbPath string) int {
	v := filepath.Base(filepath.Dir(filepath.Dir(initdbPath)))
	n, _ := strconv.Atoi(strings.SplitN(v, ".", 2)[0])
	return n
}
