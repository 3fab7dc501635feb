package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// runner is the receiving end: it answers 204 at once and notes when each
// event arrived, keyed by Idempotency-Key (the event_id). It can go away
// (connections refused) and come back on the same address.
type runner struct {
	addr string

	mu    sync.Mutex
	srv   *http.Server
	seen  map[string]int64 // first receipt; nil in count-only mode
	n     int              // requests answered
	dups  int              // requests for an id already seen (recording mode)
	first int64            // receipt of the first and last request
	last  int64
}

func startRunner() (*runner, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	rn := &runner{addr: ln.Addr().String()}
	rn.serve(ln)
	return rn, nil
}

// URL is what RELAY_RUNNER_URL points at.
func (rn *runner) URL() string { return "http://" + rn.addr + "/events" }

func (rn *runner) serve(ln net.Listener) {
	srv := &http.Server{Handler: rn, ReadHeaderTimeout: 10 * time.Second}
	rn.mu.Lock()
	rn.srv = srv
	rn.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

func (rn *runner) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	at := now()
	key := r.Header.Get("Idempotency-Key")
	rn.mu.Lock()
	if rn.seen != nil {
		if _, ok := rn.seen[key]; ok {
			rn.dups++
		} else {
			rn.seen[key] = at
		}
	}
	if rn.n == 0 {
		rn.first = at
	}
	rn.n++
	rn.last = at
	rn.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// reset forgets everything; record keeps each id's receipt time, with room
// for about hint ids.
func (rn *runner) reset(record bool, hint int) {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	rn.seen = nil
	if record {
		rn.seen = make(map[string]int64, hint)
	}
	rn.n, rn.dups, rn.first, rn.last = 0, 0, 0, 0
}

// counts is a snapshot of the runner's tallies.
type counts struct {
	n, dups     int
	first, last int64
}

func (rn *runner) counts() counts {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	return counts{n: rn.n, dups: rn.dups, first: rn.first, last: rn.last}
}

// receipts hands over the recorded receipt times; the runner keeps
// recording into a fresh map.
func (rn *runner) receipts() map[string]int64 {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	m := rn.seen
	rn.seen = map[string]int64{}
	return m
}

// stop closes the listener and every connection: the relay sees refused
// connections until start.
func (rn *runner) stop() {
	rn.mu.Lock()
	srv := rn.srv
	rn.srv = nil
	rn.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

// start listens again on the same address.
func (rn *runner) start(ctx context.Context) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		ln, err := net.Listen("tcp", rn.addr)
		if err == nil {
			rn.serve(ln)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("runner: listen again on %s: %w", rn.addr, err)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// waitFor waits until the runner has received at least n distinct ids
// (requests, in count-only mode), or
// limit has passed, polling every 5 ms. It reports whether n was reached.
func (rn *runner) waitFor(ctx context.Context, n int, limit time.Duration) (bool, error) {
	deadline := time.Now().Add(limit)
	for {
		if c := rn.counts(); c.n-c.dups >= n {
			return true, nil
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		if err := sleep(ctx, 5*time.Millisecond); err != nil {
			return false, err
		}
	}
}
