package relaytest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Answer decides the runner's answer to one request, given its body read
// in full. It returns false when it answered with a failure, so that the
// event does not count as accepted.
type Answer func(w http.ResponseWriter, r *http.Request, body []byte) bool

// Runner is the receiving end of the relay: a real HTTP server on a
// loopback port that records, by Idempotency-Key (the event id), when each
// event first arrived and how many times it was accepted. Without an
// Answer it accepts everything with 204. It can go away (connections
// refused, or reset and counted) and come back on the same address.
type Runner struct {
	addr string
	open atomic.Int64 // connections open now

	inFlight, peak atomic.Int64 // requests being answered now, and the most at once
	refused        atomic.Int64 // connections reset while refusing

	mu       sync.Mutex
	srv      *http.Server
	refuser  net.Listener // while refusing
	answer   Answer
	ids      map[string]receipt // nil: count requests only
	order    []string           // ids in the order of their first acceptance
	requests int
	first    time.Time // of the first and the last request
	last     time.Time
}

// receipt is what the runner knows of one event.
type receipt struct {
	first    time.Time
	accepted int
}

// Counts is a snapshot of the runner's tallies since the last Reset.
type Counts struct {
	Requests int // every request, whatever the answer
	// Distinct is the number of event ids seen; it equals Requests when
	// ids are not kept.
	Distinct    int
	First, Last time.Time // when the first and the last request arrived
}

// StartRunner listens on a free loopback port and serves, keeping ids.
func StartRunner() (*Runner, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("runner: %w", err)
	}
	rn := &Runner{addr: ln.Addr().String(), ids: map[string]receipt{}}
	rn.serve(ln)
	return rn, nil
}

// URL is what RELAY_RUNNER_URL points at.
func (rn *Runner) URL() string { return "http://" + rn.addr + "/events" }

func (rn *Runner) serve(ln net.Listener) {
	srv := &http.Server{Handler: rn, ReadHeaderTimeout: 10 * time.Second, ConnState: rn.countConns}
	rn.mu.Lock()
	rn.srv = srv
	rn.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

func (rn *Runner) countConns(_ net.Conn, s http.ConnState) {
	switch s {
	case http.StateNew:
		rn.open.Add(1)
	case http.StateClosed, http.StateHijacked:
		rn.open.Add(-1)
	}
}

// OpenConns is the number of connections open to the runner now.
func (rn *Runner) OpenConns() int64 { return rn.open.Load() }

// Peak is the most requests the runner was answering at once since the
// last ResetPeak.
func (rn *Runner) Peak() int64 { return rn.peak.Load() }

// ResetPeak starts a new Peak from the requests in flight now.
func (rn *Runner) ResetPeak() { rn.peak.Store(rn.inFlight.Load()) }

// InFlight is how many requests the runner is answering now.
func (rn *Runner) InFlight() int64 { return rn.inFlight.Load() }

// Refused is the number of connections reset while refusing.
func (rn *Runner) Refused() int64 { return rn.refused.Load() }

// Refuse stops serving and, until Restart, accepts each connection on the
// runner's address only to reset it at once: to the relay the runner is
// as down as with connections refused, and the runner can count every
// attempt to reach it (Refused), which a closed port cannot.
func (rn *Runner) Refuse(ctx context.Context) error {
	rn.Stop()
	ln, err := rn.listen(ctx)
	if err != nil {
		return err
	}
	rn.mu.Lock()
	rn.refuser = ln
	rn.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed by Restart or Stop
			}
			rn.refused.Add(1)
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0) // a reset, not a clean close
			}
			_ = c.Close()
		}
	}()
	return nil
}

// stopRefusing closes the refusing listener, if any.
func (rn *Runner) stopRefusing() {
	rn.mu.Lock()
	ln := rn.refuser
	rn.refuser = nil
	rn.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
}

// ServeHTTP reads the body in full before answering, so that a refusal of
// a large body reaches the relay as an answer, not as a reset connection;
// the receipt time is taken once the body is in.
func (rn *Runner) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := rn.inFlight.Add(1)
	defer rn.inFlight.Add(-1)
	for p := rn.peak.Load(); n > p; p = rn.peak.Load() {
		if rn.peak.CompareAndSwap(p, n) {
			break
		}
	}
	rn.mu.Lock()
	answer := rn.answer
	rn.mu.Unlock()
	var body []byte
	if answer == nil {
		_, _ = io.Copy(io.Discard, r.Body)
	} else {
		// Sized from Content-Length (within reason): the faults send 10 MiB.
		buf := bytes.NewBuffer(make([]byte, 0, min(max(r.ContentLength, 0), 64<<20)+bytes.MinRead))
		_, _ = buf.ReadFrom(r.Body)
		body = buf.Bytes()
	}
	key := r.Header.Get("Idempotency-Key")
	rn.mu.Lock()
	rn.noteArrival(key, time.Now())
	rn.mu.Unlock()
	if answer == nil {
		w.WriteHeader(http.StatusNoContent)
	} else if !answer(w, r, body) {
		return
	}
	// Counted before the handler returns, so before the relay can see the
	// answer: a row the relay sends only after this one's outcome is
	// accepted after it here too.
	rn.mu.Lock()
	if rc, ok := rn.ids[key]; ok {
		if rc.accepted == 0 {
			rn.order = append(rn.order, key)
		}
		rc.accepted++
		rn.ids[key] = rc
	}
	rn.mu.Unlock()
}

// noteArrival counts a request; rn.mu is held.
func (rn *Runner) noteArrival(key string, at time.Time) {
	if rn.ids != nil {
		if _, ok := rn.ids[key]; !ok {
			rn.ids[key] = receipt{first: at}
		}
	}
	if rn.requests == 0 {
		rn.first = at
	}
	rn.requests++
	rn.last = at
}

// SetAnswer replaces the answer; nil accepts everything with 204.
func (rn *Runner) SetAnswer(a Answer) {
	rn.mu.Lock()
	rn.answer = a
	rn.mu.Unlock()
}

// Reset forgets every receipt. With keepIDs it records each event id,
// with room for about hint of them; without, it only counts requests, so
// that a run of millions of events costs no memory.
func (rn *Runner) Reset(keepIDs bool, hint int) {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	rn.ids, rn.order = nil, nil
	if keepIDs {
		rn.ids = make(map[string]receipt, hint)
	}
	rn.requests, rn.first, rn.last = 0, time.Time{}, time.Time{}
}

// Counts is a snapshot of the tallies.
func (rn *Runner) Counts() Counts {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	c := Counts{Requests: rn.requests, Distinct: rn.requests, First: rn.first, Last: rn.last}
	if rn.ids != nil {
		c.Distinct = len(rn.ids)
	}
	return c
}

// FirstReceipts is when each event id first arrived, whatever the answer.
func (rn *Runner) FirstReceipts() map[string]time.Time {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	out := make(map[string]time.Time, len(rn.ids))
	for k, v := range rn.ids {
		out[k] = v.first
	}
	return out
}

// Accepted is how many times each event id was accepted; ids only ever
// refused are left out.
func (rn *Runner) Accepted() map[string]int {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	out := make(map[string]int, len(rn.ids))
	for k, v := range rn.ids {
		if v.accepted > 0 {
			out[k] = v.accepted
		}
	}
	return out
}

// FirstAcceptances is every accepted event id once, in the order of its
// first acceptance.
func (rn *Runner) FirstAcceptances() []string {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	return slices.Clone(rn.order)
}

// stopGrace is how long Stop lets requests under way finish.
const stopGrace = 5 * time.Second

// Stop closes the listener: connections are refused until Restart.
// Requests under way get a moment to finish. Safe to call again.
func (rn *Runner) Stop() {
	rn.stopRefusing()
	rn.mu.Lock()
	srv := rn.srv
	rn.srv = nil
	rn.mu.Unlock()
	if srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), stopGrace)
	defer cancel()
	_ = srv.Shutdown(ctx)
	_ = srv.Close()
}

// Restart listens again on the same address. The port was the runner's a
// moment ago and TIME_WAIT does not block a listen, but another process
// may hold it briefly: it tries for up to 10 s.
func (rn *Runner) Restart(ctx context.Context) error {
	rn.stopRefusing()
	ln, err := rn.listen(ctx)
	if err != nil {
		return err
	}
	rn.serve(ln)
	return nil
}

// listen listens on the runner's address again, trying for up to 10 s.
func (rn *Runner) listen(ctx context.Context) (net.Listener, error) {
	var ln net.Listener
	var err error
	ok, perr := poll(ctx, 50*time.Millisecond, 10*time.Second, func() (bool, error) {
		ln, err = net.Listen("tcp", rn.addr)
		return err == nil, nil
	})
	if perr != nil {
		return nil, perr
	}
	if !ok {
		return nil, fmt.Errorf("runner: listen again on %s: %w", rn.addr, err)
	}
	return ln, nil
}

// WaitDistinct waits until the runner has seen at least n event ids
// (requests, when ids are not kept) or limit has passed, and reports
// whether n was reached.
func (rn *Runner) WaitDistinct(ctx context.Context, n int, limit time.Duration) (bool, error) {
	return poll(ctx, 5*time.Millisecond, limit, func() (bool, error) {
		return rn.Counts().Distinct >= n, nil
	})
}

// poll calls cond every interval until it holds, returns an error, ctx
// ends or limit passes; it reports whether cond held.
func poll(ctx context.Context, every, limit time.Duration, cond func() (bool, error)) (bool, error) {
	deadline := time.Now().Add(limit)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		ok, err := cond()
		if ok || err != nil {
			return ok, err
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-t.C:
		}
	}
}
