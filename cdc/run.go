package cdc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sethvargo/go-retry"
)

// The stream's life: sessions one after another, each ending in a state
// (streamer, standby, down, unavailable) that decides how long to wait
// before the next.

// errStandby is returned by a session that found the slot in use.
type errStandby struct{ pid int32 }

func (e *errStandby) Error() string {
	if e.pid == 0 {
		return "replication slot is in use by another process"
	}
	return fmt.Sprintf("replication slot is in use by another process (pid %d)", e.pid)
}

// errInRecovery is returned by a session that found a read-only server.
var errInRecovery = errors.New("the server is in recovery (a read-only replica, e.g. after a failover); waiting for a writable primary")

// Run streams until ctx is done, reconnecting with backoff after failures
// and taking the slot over when another process lets it go. It returns nil
// when ctx is cancelled, and an error only when the settings cannot work.
func (s *Stream) Run(ctx context.Context) error {
	conf, err := parseConfig(s.cfg.DatabaseURL)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.password = conf.sql.Password
	s.mu.Unlock()

	h := newHandoff(handoffWhole, s.handoffIDs)
	var wg sync.WaitGroup
	wg.Go(func() { s.handOff(ctx, h) })
	defer wg.Wait()

	backoff := newBackoff()
	unavailable := false
	for {
		var streamed time.Duration
		var err error
		if unavailable {
			// Check before a session, so that a server that still cannot
			// stream is not asked to make a publication or a slot.
			err = s.checkServer(ctx, conf)
		}
		if err == nil {
			streamed, err = s.session(ctx, conf, h)
		}
		s.streaming.Store(false)
		if ctx.Err() != nil {
			s.setState(State{Role: RoleDown})
			return nil
		}
		err = s.classify(ctx, conf, err)
		var un *errUnavailable
		unavailable = errors.As(err, &un)
		wait := s.wait(err, streamed, &backoff)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			s.setState(State{Role: RoleDown})
			return nil
		case <-t.C:
		}
	}
}

// classify tells a session that failed because the server cannot stream
// at all (wal_level, privileges) from one that failed for a passing
// reason: it asks the check, and returns its errUnavailable in the first
// case, err otherwise.
func (s *Stream) classify(ctx context.Context, conf dbConfig, err error) error {
	var sb *errStandby
	var un *errUnavailable
	if errors.As(err, &sb) || errors.As(err, &un) || errors.Is(err, errInRecovery) {
		return err
	}
	if cerr := s.checkServer(ctx, conf); errors.As(cerr, &un) {
		return cerr
	}
	return err
}

// checkServer runs the check of check.go within checkTimeout.
func (s *Stream) checkServer(ctx context.Context, conf dbConfig) error {
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	return check(cctx, s.cfg, conf)
}

// wait records the state a session ended in, logs each change of state
// once, and says how long to wait before the next session.
func (s *Stream) wait(err error, streamed time.Duration, backoff *retry.Backoff) time.Duration {
	var sb *errStandby
	var un *errUnavailable
	switch {
	case errors.As(err, &sb):
		if s.transition(RoleStandby, RoleStandby, "") {
			s.log.Info("replication: the slot is held by another process; standing by",
				"holder_pid", sb.pid, "retry_every", s.standbyEvery.String())
		}
		*backoff = newBackoff()
		return s.standbyEvery
	case errors.As(err, &un):
		msg := s.redact(err)
		if s.transition(RoleUnavailable, RoleUnavailable, msg) {
			s.log.Warn("replication: logical replication is unavailable on this server; delivering sweep-only",
				"reason", msg, "check_every", s.unavailableEvery.String())
		}
		*backoff = newBackoff()
		return s.unavailableEvery
	case errors.Is(err, errInRecovery):
		if s.transition(RoleDown, "recovery", err.Error()) {
			s.log.Warn("replication: " + err.Error())
		}
	default:
		if streamed >= resetAfter {
			*backoff = newBackoff()
		}
		msg := s.redact(err)
		if s.transition(RoleDown, RoleDown, msg) {
			s.log.Warn("replication stream down; reconnecting with backoff", "error", msg)
		}
	}
	wait, _ := (*backoff).Next()
	return wait
}

func newBackoff() retry.Backoff {
	return retry.WithCappedDuration(reconnectMax, retry.WithJitterPercent(10, retry.NewExponential(reconnectBase)))
}

// transition records the stream's state and reports whether its kind
// changed since the last call: each change is logged once, retries are
// not. kind is the role, or a finer state such as "recovery".
func (s *Stream) transition(role, kind, lastError string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := kind != s.kind
	s.kind = kind
	s.state.Role, s.state.LastError = role, lastError
	s.state.Connected = role == RoleStreamer
	return changed
}

func (s *Stream) setState(st State) {
	s.mu.Lock()
	s.state = st
	s.kind = ""
	s.mu.Unlock()
}
