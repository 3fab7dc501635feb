package cdc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// reader is one session's view of the stream: ids gathered for the next
// hand-off and the positions that may be confirmed.
type reader struct {
	s    *Stream
	conn *pgconn.PgConn
	h    *handoff

	// rels maps a relation's OID to the index of its id column, -1 for a
	// relation that is not the outbox (or has no id column).
	rels map[uint32]int

	pending []string // ids not yet handed off, as text
	inTx    bool     // between a Begin and its Commit
	txIDs   bool     // the current transaction had outbox inserts

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
	warnedNoID           bool
}

// stream reads the replication stream until the connection fails or ctx
// is done. It returns nil when ctx is done, after a last confirmation.
func (s *Stream) stream(ctx context.Context, conn *pgconn.PgConn, h *handoff) error {
	now := time.Now()
	r := &reader{
		s: s, conn: conn, h: h,
		rels:     map[uint32]int{},
		lastRecv: now, nextStatus: now.Add(statusInterval),
	}
	var rd recvDeadline
	defer rd.stop()
	for {
		msg, err := conn.ReceiveMessage(rd.until(ctx, r.nextStatus))
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
		case r.ackDue && r.safe > r.sent:
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
	default:
		// NoticeResponse, ParameterStatus: nothing to do.
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
	if ka.ReplyRequested || r.safe > r.sent {
		return r.status(false)
	}
	return nil
}

// change decodes one pgoutput message and keeps the inserted ids.
func (r *reader) change(ctx context.Context, data []byte) error {
	if len(data) == 0 {
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
	case *pglogrepl.CommitMessage:
		r.inTx = false
		r.received = max(r.received, m.TransactionEndLSN)
		if len(r.pending) > 0 {
			// Hand off at every commit: the hand-off goroutine batches
			// whatever gathers while it is busy (docs/BENCHMARKS.md).
			return r.flush(ctx)
		}
		// Every id of this transaction was handed off already
		// (BatchSize flushes), or it had none.
		r.safe = max(r.safe, r.received)
		r.ackDue = r.ackDue || r.txIDs
	case *pglogrepl.RelationMessage:
		r.relation(m)
	case *pglogrepl.InsertMessage:
		id, ok := r.id(m)
		if !ok {
			return nil
		}
		r.pending = append(r.pending, id)
		r.txIDs = true
		if len(r.pending) >= r.s.cfg.BatchSize {
			return r.flush(ctx)
		}
	}
	// Update, Delete, Truncate, Type, Origin, Message: not ours to act on.
	return nil
}

// relation learns where the id column of the outbox table is.
func (r *reader) relation(m *pglogrepl.RelationMessage) {
	idx := -1
	if m.Namespace == r.s.cfg.Schema && m.RelationName == r.s.cfg.Table {
		for i, c := range m.Columns {
			if c.Name == r.s.cfg.IDColumn {
				idx = i
				break
			}
		}
		if idx < 0 && !r.warnedNoID {
			r.warnedNoID = true
			r.s.log.Error("replication: the outbox table has no id column; inserts are left to the sweeper", "column", r.s.cfg.IDColumn)
		}
	}
	r.rels[m.RelationID] = idx
}

// id is the id of a row inserted into the outbox table, in its text form
// whatever the column's type: the claim casts it back.
func (r *reader) id(m *pglogrepl.InsertMessage) (string, bool) {
	idx, ok := r.rels[m.RelationID]
	if !ok || idx < 0 || m.Tuple == nil || idx >= len(m.Tuple.Columns) {
		return "", false
	}
	col := m.Tuple.Columns[idx]
	if col.DataType != pglogrepl.TupleDataTypeText || len(col.Data) == 0 {
		return "", false
	}
	return string(col.Data), true
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
	ok, err := r.h.put(ctx, r.pending, wait)
	if err != nil {
		return err
	}
	r.s.shed(!ok, len(r.pending))
	r.pending = r.pending[:0]
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
	r.nextStatus = time.Now().Add(statusInterval)
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
