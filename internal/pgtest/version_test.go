package pgtest

import (
	"strings"
	"testing"
)

func TestParseMajor(t *testing.T) {
	for in, want := range map[string]int{
		"postgres (PostgreSQL) 17.10\n":                        17,
		"postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)": 15,
		"postgres (PostgreSQL) 18beta1":                        18,
		"postgres (PostgreSQL) 9.6.24":                         9,
		"postgres 17":                                          0,
		"":                                                     0,
	} {
		got, err := parseMajor(in)
		if want == 0 {
			if err == nil {
				t.Errorf("parseMajor(%q) = %d, want an error", in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("parseMajor(%q) = %d, %v, want %d", in, got, err, want)
		}
	}
}

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
