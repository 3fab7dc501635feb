package pgtest

import (
	"strings"
	"testing"
)

// A bindir named in RELAY_TEST_PG_BINDIR comes first; one without the
// server binaries is an error naming the variable, not a silent fallback.
func TestFindBinDirHonoursEnv(t *testing.T) {
	real, err := FindBinDir()
	if err != nil {
		t.Skipf("no PostgreSQL here: %v", err)
	}
	empty := t.TempDir()
	t.Setenv(EnvBinDir, empty)
	if dir, err := FindBinDir(); err == nil || !strings.Contains(err.Error(), EnvBinDir) {
		t.Errorf("FindBinDir with %s=%s (empty) = %q, %v; want an error naming the variable", EnvBinDir, empty, dir, err)
	}
	t.Setenv(EnvBinDir, real)
	if dir, err := FindBinDir(); err != nil || dir != real {
		t.Errorf("FindBinDir with %s=%s = %q, %v", EnvBinDir, real, dir, err)
	}
}
