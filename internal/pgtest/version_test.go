package pgtest

import "testing"

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
