package retryafter

import (
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"120", 2 * time.Minute, true},
		{" 7 ", 7 * time.Second, true},
		{"0", 0, true},
		{"-5", 0, false},
		{"1.5", 0, false},
		{"soon", 0, false},
		{"99999999999999999999999", Max, true},
		{"9999999", Max, true},
		{"Fri, 27 Nov 2026 12:00:30 GMT", 30 * time.Second, true},
		{"Fri, 27 Nov 2026 11:00:00 GMT", 0, true}, // in the past: no wait
		{"Friday, 27-Nov-26 12:01:00 GMT", time.Minute, true},
		{"Fri Nov 27 12:00:10 2026", 10 * time.Second, true},
	}
	for _, c := range cases {
		got, ok := Parse(c.in, now)
		if got != c.want || ok != c.ok {
			t.Errorf("Parse(%q) = %s, %v; want %s, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"120", "0", "Fri, 27 Nov 2026 12:00:30 GMT", "-1", "1e9", "Mon, 01 Jan 0001 00:00:00 GMT"} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := Parse(s, now)
		if d < 0 || d > Max {
			t.Fatalf("Parse(%q) = %s out of [0, %s]", s, d, Max)
		}
		if !ok && d != 0 {
			t.Fatalf("Parse(%q) = %s with ok false", s, d)
		}
	})
}
