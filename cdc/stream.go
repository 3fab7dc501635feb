package cdc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// reader is one session's view of the stream: ids gathered for the next
// hand-off and the positions that may be confirmed.
type reader struct {
	s    *Stream
	conn *pgconn.PgConn
	h    *handoff

	// rels maps a relation's OID to where its id column is; id is -1 for
	// a relation that is not the outbox (or has no id column).
	rels map[uint32]relation

	pending []store.Insert // ids to claim, not yet handed off
	// held are the rows of the open transaction to be sent from their
	// tuple: handed off only at its commit, since a later change of the
	// transaction to one of them (changes.go) makes it a row to claim
	// instead. heldAt indexes them by id once there are many.
	held      []store.Insert
	heldBytes int
	heldAt    map[string]int
	inTx      bool // between a Begin and its Commit
	txIDs     bool // the current transaction had outbox inserts

	// start is the session's horizon and clock offset (session.go); the
	// zero value hands every row on to be claimed by id.
	start sessionStart
	// replay: the current transaction committed before the horizon, so
	// an earlier session may have announced (and sent) its rows; replayed
	// counts such rows since the last hand-off.
	replay   bool
	replayed int

	// received is a position before which every change has arrived: the
	// end of the last commit, or the server's WAL end from a keepalive
	// that came between transactions. safe is the position before which
	// every change has been handed off, that is put in the hand-off
	// buffer: what may be confirmed, since from there on the table, not
	// the slot, answers for the rows (a crash leaves them to the sweeper).
	received, safe pglogrepl.LSN
	sent           pglogrepl.LSN // last position confirmed
	ackDue         bool          // ids were handed off since the last confirmation

	lastRecv, nextStatus time.Time
	lastAck              time.Time // when the last status update went
	warnedNoID           bool
}

// ackEvery paces the confirmations of handed-off positions: one standby
// status update per commit made the walsender process hundreds of replies
// a second at a steady load, for WAL that a few milliseconds later is
// confirmed anyway.
const ackEvery = 50 * time.Millisecond

// stream reads the replication stream until the connection fails or ctx
// is done. It returns nil when ctx is done, after a last confirmation.
func (s *Stream) stream(ctx context.Context, conn *pgconn.PgConn, h *handoff, start sessionStart) error {
	now := time.Now()
	r := &reader{
		s: s, conn: conn, h: h, start: start,
		rels:     map[uint32]relation{},
		lastRecv: now, nextStatus: now.Add(statusInterval),
	}
	var rd recvDeadline
	defer rd.stop()
	for {
		until := r.nextStatus
		if ack := r.lastAck.Add(ackEvery); r.ackDue && r.safe > r.sent && ack.Before(until) {
			until = ack
		}
		msg, err := conn.ReceiveMessage(rd.until(ctx, until))
		switch {
		case ctx.Err() != nil:
			r.goodbye()
			return nil
		case err == nil:
			r.lastRecv = time.Now()
			if err := r.handle(ctx, msg); err != nil {
				return err
			}
		case !pgconn.Timeout(err):
			return fmt.Errorf("receive: %w", err)
		}

		now := time.Now()
		switch {
		case !now.Before(r.nextStatus):
			if now.Sub(r.lastRecv) > silenceLimit {
				return fmt.Errorf("no message from the server for %s; reconnecting", now.Sub(r.lastRecv).Round(time.Second))
			}
			// Ask for a reply: it proves the connection is alive.
			if err := r.status(true); err != nil {
				return err
			}
		case r.ackDue && r.safe > r.sent && !now.Before(r.lastAck.Add(ackEvery)):
			if err := r.status(false); err != nil {
				return err
			}
		}
	}
}

// recvDeadline is the context of the reader's receives. One serves every
// message until it ends, rather than a context and its timer per message
// (three an event). A status update moves nextStatus later, so it may end
// before nextStatus: a wake-up with nothing to do, at most one a
// statusInterval, after which the next one ends at nextStatus.
type recvDeadline struct {
	ctx    context.Context
	cancel context.CancelFunc
	at     time.Time
}

// until returns a context of parent that ends no later than t: the
// current one while it lasts, else a new one that ends at t.
func (d *recvDeadline) until(parent context.Context, t time.Time) context.Context {
	if d.ctx == nil || d.ctx.Err() != nil || d.at.After(t) {
		d.stop()
		d.ctx, d.cancel = context.WithDeadline(parent, t)
		d.at = t
	}
	return d.ctx
}

func (d *recvDeadline) stop() {
	if d.cancel != nil {
		d.cancel()
	}
}

// handle processes one message from the server.
func (r *reader) handle(ctx context.Context, msg pgproto3.BackendMessage) error {
	switch msg := msg.(type) {
	case *pgproto3.CopyData:
		if len(msg.Data) == 0 {
			return nil
		}
		switch msg.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
			if err != nil {
				return fmt.Errorf("keepalive: %w", err)
			}
			return r.keepalive(ka)
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
			if err != nil {
				return fmt.Errorf("xlog data: %w", err)
			}
			return r.change(ctx, xld.WALData)
		}
		return nil
	case *pgproto3.ErrorResponse:
		return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(msg))
	case *pgproto3.CopyDone:
		return errors.New("the server ended the replication stream")
	case *pgproto3.NoticeResponse:
		if notice := pgconn.ErrorResponseToPgError((*pgproto3.ErrorResponse)(msg)); publicationSkipped(notice) {
			return fmt.Errorf("replication stream: %w", notice)
		}
		return nil
	default:
		// ParameterStatus: nothing to do.
		return nil
	}
}

// keepalive advances the confirmable position to the server's WAL end
// when every change received has been handed off: the publication filters
// out other tables' changes, so without this an idle outbox would pin WAL
// however busy the rest of the database is.
func (r *reader) keepalive(ka pglogrepl.PrimaryKeepaliveMessage) error {
	if !r.inTx {
		r.received = max(r.received, ka.ServerWALEnd)
		if len(r.pending) == 0 {
			r.safe = max(r.safe, r.received)
		}
	}
	if ka.ReplyRequested {
		return r.status(false)
	}
	// Otherwise the position goes with the next paced confirmation: the
	// walsender sends a keepalive after every commit, and answering each
	// one doubled the replies per event.
	r.ackDue = r.ackDue || r.safe > r.sent
	return nil
}

// change decodes one pgoutput message and keeps the inserted ids.
func (r *reader) change(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	if len(r.held) == 0 && changeOnly(data[0]) {
		// An update, delete or truncate matters only to rows held for
		// their commit: the relay's own claims and outcomes stop here,
		// undecoded.
		return nil
	}
	m, err := pglogrepl.Parse(data)
	if err != nil {
		// A message type protocol 1 does not send (or a newer one):
		// nothing the relay needs.
		r.s.log.Debug("replication: ignored a message", "type", string(data[0]), "error", err)
		return nil
	}
	switch m := m.(type) {
	case *pglogrepl.BeginMessage:
		r.inTx, r.txIDs = true, false
		r.replay = r.start.horizon != 0 && m.FinalLSN <= r.start.horizon
	case *pglogrepl.CommitMessage:
		return r.committed(ctx, m)
	case *pglogrepl.RelationMessage:
		r.relation(m)
	case *pglogrepl.InsertMessage:
		return r.inserted(ctx, m)
	case *pglogrepl.UpdateMessage:
		r.updated(m)
	case *pglogrepl.DeleteMessage:
		r.deleted(m)
	case *pglogrepl.TruncateMessage:
		r.truncated(m)
	}
	// Type, Origin, Message: not ours to act on.
	return nil
}

// committed hands off what a transaction leaves at its commit: its ids to
// claim first, then its held rows. Ids still pending go on their own so
// that the held list moves on without a copy (release).
func (r *reader) committed(ctx context.Context, m *pglogrepl.CommitMessage) error {
	r.inTx = false
	held := len(r.held) > 0
	if held && len(r.pending) > 0 {
		if err := r.flush(ctx); err != nil {
			return err
		}
	}
	r.received = max(r.received, m.TransactionEndLSN)
	if r.replayed > 0 {
		r.s.leftToSweeper(r.replayed)
		r.replayed = 0
	}
	if held {
		r.release()
	}
	if len(r.pending) > 0 {
		// Hand off at every commit: the hand-off goroutine batches
		// whatever gathers while it is busy (docs/BENCHMARKS.md).
		return r.flush(ctx)
	}
	// Every id of this transaction was handed off already (BatchSize
	// flushes), or it had none.
	r.safe = max(r.safe, r.received)
	r.ackDue = r.ackDue || r.txIDs
	return nil
}

// inserted takes a row inserted into the outbox: held for its commit when
// it can be sent from its tuple, else an id to claim.
func (r *reader) inserted(ctx context.Context, m *pglogrepl.InsertMessage) error {
	in, ok := r.insert(m)
	if !ok {
		return nil
	}
	r.txIDs = true
	if r.replay {
		// Not to be claimed at once: the session that announced it may
		// still be sending it without a claim. The sweeper takes it once
		// the grace has passed.
		r.replayed++
		return nil
	}
	if r.hold(&in) {
		return nil
	}
	r.pending = append(r.pending, in)
	if len(r.pending) >= r.s.cfg.BatchSize {
		// Ids are claimed, which reads the row as committed: they may go
		// before the commit arrives.
		return r.flush(ctx)
	}
	return nil
}

// flush hands the pending ids to the hand-off goroutine, waiting a little
// while its buffer is full; when the deliverer cannot keep up the ids are
// left to the sweeper (see handoff.put) and the stream reads on.
func (r *reader) flush(ctx context.Context) error {
	// Once shedding, waiting again at every commit would slow reading
	// below the rate WAL is written: drop at once until there is room.
	wait := handoffWait
	if r.s.shedding.Load() {
		wait = 0
	}
	n := len(r.pending)
	ok, err := r.h.put(ctx, &r.pending, wait)
	if err != nil {
		return err
	}
	r.s.shed(!ok, n)
	r.pending = emptied(r.pending)
	// Everything up to the last position received is handed off now:
	// the table holds the rows, so the slot need not.
	r.safe = max(r.safe, r.received)
	r.ackDue = true
	return nil
}

// status confirms the safe position as written, flushed and applied.
// Before the first position is known it sends 0/0, which the server
// ignores: a standby status update never moves the slot backwards then.
func (r *reader) status(reply bool) error {
	pos := r.safe
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), r.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pos,
		WALFlushPosition: pos,
		WALApplyPosition: pos,
		ClientTime:       time.Now(),
		ReplyRequested:   reply,
	})
	if err != nil {
		return fmt.Errorf("standby status update: %w", err)
	}
	r.sent, r.ackDue = pos, false
	r.lastAck = time.Now()
	r.nextStatus = r.lastAck.Add(statusInterval)
	if pos != 0 {
		r.s.setConfirmed(pos)
	}
	return nil
}

// goodbye confirms what was handed off before the connection is closed at
// shutdown. Ids not handed off yet are left to the sweeper.
func (r *reader) goodbye() {
	if r.safe > r.sent {
		if err := r.status(false); err != nil {
			r.s.log.Debug("replication: last confirmation failed", "error", err)
		}
	}
}
