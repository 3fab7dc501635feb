package relay

import (
	"testing"
	"time"
)

func TestBackoffDelay(t *testing.T) {
	b := Backoff{Base: time.Second, Max: 10 * time.Minute, Rand: func() float64 { return 0 }}
	want := []time.Duration{1, 2, 4, 8, 16, 32, 64, 128, 256, 512}
	for i, w := range want {
		if got := b.Delay(i + 1); got != w*time.Second {
			t.Errorf("Delay(%d) = %s, want %s", i+1, got, w*time.Second)
		}
	}
	for _, n := range []int{11, 25, 63, 64, 1000} {
		if got := b.Delay(n); got != 10*time.Minute {
			t.Errorf("Delay(%d) = %s, want the cap", n, got)
		}
	}
}

func TestBackoffJitterBounds(t *testing.T) {
	for _, r := range []float64{0, 0.25, 0.5, 0.999999} {
		b := Backoff{Base: time.Second, Max: time.Minute, Jitter: 0.2, Rand: func() float64 { return r }}
		for n := 1; n <= 30; n++ {
			full := min(time.Minute, time.Second<<(n-1))
			got := b.Delay(n)
			if got > full || got < full-full/5 {
				t.Errorf("r=%v Delay(%d) = %s, want within [%s, %s]", r, n, got, full-full/5, full)
			}
		}
	}
	// The real random source stays in bounds too.
	b := Backoff{Base: 100 * time.Millisecond, Max: time.Second, Jitter: 1}
	for range 1000 {
		if d := b.Delay(3); d < 0 || d > 400*time.Millisecond {
			t.Fatalf("Delay(3) = %s out of [0, 400ms]", d)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
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
		{"99999999999999999999999", maxRetryAfter, true},
		{"9999999", maxRetryAfter, true},
		{"Fri, 27 Nov 2026 12:00:30 GMT", 30 * time.Second, true},
		{"Fri, 27 Nov 2026 11:00:00 GMT", 0, true}, // in the past: no wait
		{"Friday, 27-Nov-26 12:01:00 GMT", time.Minute, true},
		{"Fri Nov 27 12:00:10 2026", 10 * time.Second, true},
	}
	for _, c := range cases {
		got, ok := ParseRetryAfter(c.in, now)
		if got != c.want || ok != c.ok {
			t.Errorf("ParseRetryAfter(%q) = %s, %v; want %s, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"120", "0", "Fri, 27 Nov 2026 12:00:30 GMT", "-1", "1e9", "Mon, 01 Jan 0001 00:00:00 GMT"} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := ParseRetryAfter(s, now)
		if d < 0 || d > maxRetryAfter {
			t.Fatalf("ParseRetryAfter(%q) = %s out of [0, %s]", s, d, maxRetryAfter)
		}
		if !ok && d != 0 {
			t.Fatalf("ParseRetryAfter(%q) = %s with ok false", s, d)
		}
	})
}
