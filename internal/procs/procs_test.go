package procs

import (
	"context"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestControllerRules(t *testing.T) {
	const (
		calm     = 0.1
		busy     = 0.7
		middling = 0.5 // between the thresholds
	)
	ticks := func(d time.Duration) int { return int(d / tick) }

	t.Run("one P stays while calm or middling", func(t *testing.T) {
		c := newController(4)
		for _, cpu := range []float64{calm, middling, raiseCPU - 0.01, calm} {
			if got := c.next(cpu); got != 1 {
				t.Fatalf("next(%v) = %d, want 1", cpu, got)
			}
		}
	})
	t.Run("CPU raises at once", func(t *testing.T) {
		for _, cpu := range []float64{raiseCPU, busy} {
			c := newController(4)
			if got := c.next(cpu); got != 4 {
				t.Errorf("next(%v) = %d, want 4", cpu, got)
			}
		}
	})
	t.Run("the default stays until calm for dropAfter", func(t *testing.T) {
		c := newController(4)
		c.next(busy)
		for i := range ticks(dropAfter) - 1 {
			if got := c.next(calm); got != 4 {
				t.Fatalf("tick %d of calm: %d Ps, want 4", i+1, got)
			}
		}
		if got := c.next(calm); got != 1 {
			t.Fatalf("after %s of calm: %d Ps, want 1", dropAfter, got)
		}
	})
	t.Run("a middling tick restarts the calm", func(t *testing.T) {
		c := newController(4)
		c.next(busy)
		for range ticks(dropAfter) - 1 {
			c.next(calm)
		}
		c.next(middling)
		if got := c.next(calm); got != 4 {
			t.Fatalf("%d Ps right after a middling tick, want 4", got)
		}
	})
	t.Run("a raise soon after a drop doubles the calm needed", func(t *testing.T) {
		c := newController(4)
		c.next(busy)
		for range ticks(dropAfter) {
			c.next(calm)
		}
		c.next(busy) // right after the drop
		for i := range ticks(2*dropAfter) - 1 {
			if got := c.next(calm); got != 4 {
				t.Fatalf("tick %d of calm after a flap: %d Ps, want 4 until %s", i+1, got, 2*dropAfter)
			}
		}
		if got := c.next(calm); got != 1 {
			t.Fatalf("after %s of calm: %d Ps, want 1", 2*dropAfter, got)
		}
	})
	t.Run("the calm needed is capped", func(t *testing.T) {
		c := newController(4)
		for range 20 {
			c.next(busy)
			for i := 0; c.cur != 1; i++ {
				if i > ticks(maxCalm) {
					t.Fatalf("still %d Ps after %s of calm", c.cur, maxCalm)
				}
				c.next(calm)
			}
		}
		if c.need != maxCalm {
			t.Errorf("calm needed after 20 flaps = %s, want %s", c.need, maxCalm)
		}
	})
}

// Run takes the process up to the default under a real CPU load, back to
// one P once the load is gone, and leaves the default when it stops (here
// while at one P).
func TestSizerFollowsTheLoad(t *testing.T) {
	max := runtime.GOMAXPROCS(0)
	if max < 2 || os.Getenv("GOMAXPROCS") != "" {
		t.Skipf("GOMAXPROCS is %d (environment %q): nothing to size", max, os.Getenv("GOMAXPROCS"))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Sizer{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}.Run(ctx) }()
	waitFor(t, 5*time.Second, "one P", func() bool { return runtime.GOMAXPROCS(0) == 1 })

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			var x uint64
			for {
				select {
				case <-stop:
					sink.Add(x)
					return
				default:
					x = spin(x)
				}
			}
		})
	}
	waitFor(t, 30*time.Second, "the default under load", func() bool { return runtime.GOMAXPROCS(0) == max })
	close(stop)
	wg.Wait()
	waitFor(t, dropAfter+10*time.Second, "one P once calm", func() bool { return runtime.GOMAXPROCS(0) == 1 })

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := runtime.GOMAXPROCS(0); got != max {
		t.Errorf("GOMAXPROCS after Run = %d, want the default %d back", got, max)
	}
}

// A GOMAXPROCS in the environment is the operator's: Run returns at once
// and changes nothing.
func TestSizerLeavesASetGOMAXPROCSAlone(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	if before < 2 {
		t.Skipf("GOMAXPROCS is %d: the sizer would do nothing anyway", before)
	}
	t.Setenv("GOMAXPROCS", "3")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := (Sizer{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}).Run(ctx); err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil {
		t.Fatal("Run ran until its context ended instead of returning at once")
	}
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Errorf("GOMAXPROCS = %d, want %d untouched", got, before)
	}
}

// sink keeps the spinning from being optimised away.
var sink atomic.Uint64

func spin(x uint64) uint64 {
	for i := range 100_000 {
		x = x*31 + uint64(i)
	}
	return x
}

func waitFor(t *testing.T, limit time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
