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
