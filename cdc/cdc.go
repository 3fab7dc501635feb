// Package cdc is the fast path: a logical-replication consumer (pgoutput,
// protocol 1) that reads the ids of rows inserted into the outbox table and
// hands them to the Deliverer within milliseconds of the commit.
//
// The stream is a doorbell, not a queue: the table holds every row until it
// is delivered, so the consumer confirms WAL as soon as ids are handed off,
// confirms the server's WAL end when nothing is pending, and treats a lost
// slot as something to recreate. The sweeper covers every gap.
package cdc

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// Deliverer is what the stream needs from relay.Deliverer.
type Deliverer interface {
	// DeliverInserts queues the rows the stream saw inserted: those
	// decoded whole (Sendable) may be sent without a claim, the others are
	// claimed by id if pending and due. It returns the ids it neither
	// queued nor claimed.
	DeliverInserts(ctx context.Context, ins []store.Insert) (missing []string, err error)
}

// Config is what the stream needs to know.
type Config struct {
	DatabaseURL string
	// Schema and Table name the outbox table, IDColumn its id column.
	Schema, Table, IDColumn string
	Slot                    string
	Publication             string
	// BatchSize is the most ids handed to the Deliverer at once.
	BatchSize int
	// Outbox, when set, lets the stream decode inserted rows whole, so
	// that fresh ones are sent without a claim; nil hands ids only.
	Outbox *store.Schema
	// SkipOrigins asks the server (16 and later) not to send changes made
	// by sessions that carry a replication origin: the relay's outcome
	// writes carry one (store.TakeOrigin). Rows that a logical
	// replication subscriber applies to the outbox carry one too; the
	// stream then leaves them to the sweeper.
	SkipOrigins bool
}

// Roles of a Stream, as State reports them.
const (
	RoleStreamer = "streamer" // holds the slot and receives changes
	RoleStandby  = "standby"  // the slot is held by another process
	RoleDown     = "down"     // not connected; retrying
	// RoleUnavailable: the server cannot stream as it is configured
	// (wal_level, privileges, pg_hba.conf); the relay delivers
	// sweep-only and checks again every unavailableRetry.
	RoleUnavailable = "unavailable"
)

// State is a snapshot of the stream for metrics and health.
type State struct {
	Role      string
	Connected bool   // the replication connection is up
	LastError string // why the stream is down; never holds a secret
	// ConfirmedLSN is the last position confirmed to the server, as
	// Postgres writes it (0/16B3748); empty before the first.
	ConfirmedLSN string
}

// Timings and bounds. standbyRetry is copied into each Stream, so that
// tests can vary it.
const (
	// statusInterval is the longest time between two standby status
	// updates; each asks the server for a reply, which doubles as a
	// liveness check of the connection.
	statusInterval = 10 * time.Second

	// silenceLimit is how long the server may say nothing at all, despite
	// our reply requests, before the connection is taken for dead. The
	// walsender can be busy decoding a large transaction for a while, but
	// it pings at least every wal_sender_timeout/2 (30 s by default).
	silenceLimit = 60 * time.Second

	// standbyRetry is how often a standby tries to take the slot.
	standbyRetry = 3 * time.Second

	// unavailableRetry is how often a server that cannot stream is checked
	// again: slow, since only its operator can fix it, but an operator who
	// does sees the stream come back without restarting the relay.
	unavailableRetry = 30 * time.Second

	// checkTimeout bounds one check of the server (check.go).
	checkTimeout = 2 * queryTimeout

	// reconnectBase and reconnectMax bound the reconnect backoff.
	reconnectBase = 100 * time.Millisecond
	reconnectMax  = 5 * time.Second

	// resetAfter is how long a session must have streamed for the
	// backoff to start again from reconnectBase: a stream that fails
	// right after each start still backs off.
	resetAfter = 5 * time.Second

	// handoffWhole is how many bytes of rows wait whole for the hand-off
	// goroutine, to be sent from their tuple; handoffMax is how many rows
	// and ids may wait in all before the reader waits too, and then drops
	// them to the sweeper (about 8 MiB of ids). Rows that wait longer
	// than their share of the grace are claimed anyway
	// (relay.DeliverInserts); a row larger than the budget, and every row
	// behind it until the backlog drains, waits as an id. Why these sizes:
	// docs/decisions/0004-hand-off-holds-4-mib-of-whole-rows.md.
	handoffWhole = 4 << 20
	handoffMax   = 1 << 18

	// handoffWait is how long the reader waits for room in a full
	// hand-off buffer before it leaves the ids to the sweeper. Long enough
	// to ride out a burst, short enough that keepalives are answered and
	// WAL is confirmed while the runner is slow or down.
	handoffWait = 200 * time.Millisecond

	// queryTimeout bounds every set-up statement and connection attempt.
	queryTimeout = 10 * time.Second

	// createSlotTimeout bounds CREATE_REPLICATION_SLOT, which waits for
	// the transactions running at the time to finish.
	createSlotTimeout = time.Minute
)

// missingRetries are the waits before claiming again ids the Deliverer did
// not find: a commit can reach the stream a moment before it is visible to
// a new snapshot. Ids still missing after the last are left to the sweeper
// (they are usually rows someone else already claimed).
var missingRetries = []time.Duration{2 * time.Millisecond, 4 * time.Millisecond, 8 * time.Millisecond}

// Stream consumes the replication slot and hands inserted ids to the
// Deliverer. Run it once.
type Stream struct {
	cfg Config
	d   Deliverer
	log *slog.Logger

	standbyEvery, unavailableEvery time.Duration
	handoffIDs                     int // handoffMax; tests change it

	// wake is signalled when rows are left in the table that the stream
	// will not announce: see Wake.
	wake chan struct{}
	// dropped is signalled when the stream left ids to the sweeper: see
	// Dropped.
	dropped chan struct{}
	server  server // the server last followed; used by Run's goroutine only
	// afterSwitch: the session reached another server and has not
	// streamed from it yet; used by Run's goroutine only.
	afterSwitch bool

	streaming atomic.Bool
	shedding  atomic.Bool // the last hand-off was dropped
	broken    bool        // the slot must be made again; used by Run's goroutine only
	// warnedClaimFirst: the reason rows are claimed first was logged.
	warnedClaimFirst bool

	mu        sync.Mutex
	state     State
	kind      string // state last logged, to log each change once
	password  string // scrubbed from every error shown
	confirmed pglogrepl.LSN
}

// New makes a Stream; Run starts it.
func New(cfg Config, d Deliverer, log *slog.Logger) *Stream {
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 100
	}
	if cfg.IDColumn == "" {
		cfg.IDColumn = "id"
	}
	return &Stream{
		cfg: cfg, d: d, log: log.With("slot", cfg.Slot),
		standbyEvery: standbyRetry, unavailableEvery: unavailableRetry, handoffIDs: handoffMax,
		wake:    make(chan struct{}, 1),
		dropped: make(chan struct{}, 1),
		state:   State{Role: RoleDown},
	}
}

// Wake is signalled when rows are in the table that the stream will not
// hand to the deliverer, so the sweeper should sweep at once (and again
// when its grace has passed: a fresh row may be in flight unclaimed)
// rather than at its next tick:
//   - the stream reconnected to another server than the one it followed
//     (another system identifier or timeline: a promoted standby), and
//     again once it streams from it: rows whose announcement the switch
//     cut, and rows committed there before the new slot began;
//   - a hand-off to the deliverer failed (the database refused the claim).
//
// Ids the stream drops because the deliverer is behind do not wake it so:
// see Dropped.
func (s *Stream) Wake() <-chan struct{} { return s.wake }

// Streaming reports whether this process holds the slot and receives
// changes.
func (s *Stream) Streaming() bool { return s.streaming.Load() }

// Dropped is signalled when the stream left ids to the sweeper because
// the deliverer was behind. The sweeper should sweep then, with its usual
// grace, rather than at its next tick: the dropped rows are claimed as
// soon as they are older than the grace (its next wake-up is timed on the
// oldest of them) rather than after a whole sweep interval
// (docs/decisions/0003-wake-the-sweeper-on-drops.md).
func (s *Stream) Dropped() <-chan struct{} { return s.dropped }

// shed notes whether a hand-off was dropped, logging once per change.
func (s *Stream) shed(dropped bool, n int) {
	was := s.shedding.Swap(dropped)
	switch {
	case dropped:
		signal(s.dropped)
		if !was {
			s.log.Warn("replication: the deliverer is not keeping up; new rows are left to the sweeper", "ids", n)
		}
	case was:
		s.log.Info("replication: the deliverer keeps up again")
	}
}

// leftToSweeper signals the sweeper for rows the stream did not hand on:
// those of a transaction an earlier session may have announced already.
// It sweeps with its grace, so it does not take a row that session may
// still be sending.
func (s *Stream) leftToSweeper(n int) {
	signal(s.dropped)
	s.log.Debug("replication: rows committed before this session took the slot are left to the sweeper", "rows", n)
}

// State is a snapshot for metrics and health.
func (s *Stream) State() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state
	if s.confirmed != 0 {
		st.ConfirmedLSN = s.confirmed.String()
	}
	return st
}

// setConfirmed records the last position confirmed to the server, which
// State reports.
func (s *Stream) setConfirmed(lsn pglogrepl.LSN) {
	s.mu.Lock()
	s.confirmed = lsn
	s.mu.Unlock()
}
