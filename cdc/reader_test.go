package cdc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// The reader's confirmation rules, fed with made-up messages. The reader
// sends its standby status updates on a real replication connection that
// streams from a temporary slot; the test never reads from it, so the
// server's own messages do not interfere. The positions used are below the
// slot's start, which the server ignores, as it ignores any confirmation
// that would move a slot backwards.

// replicationConn opens a replication connection streaming from a
// temporary slot of a fresh database; it is closed (and the slot gone)
// when the test ends.
func replicationConn(t *testing.T) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := setup(t)
	if _, err := b.pool.Exec(ctx, `CREATE PUBLICATION outbox_relay FOR TABLE portal_event_outbox WITH (publish = 'insert')`); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgconn.ParseConfig(b.url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeConn(context.Background(), conn) })
	if _, err := pglogrepl.CreateReplicationSlot(ctx, conn, b.cfg.Slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
		Temporary: true, Mode: pglogrepl.LogicalReplication, SnapshotAction: "NOEXPORT_SNAPSHOT",
	}); err != nil {
		t.Fatal(err)
	}
	if err := pglogrepl.StartReplication(ctx, conn, b.cfg.Slot, 0, pglogrepl.StartReplicationOptions{
		Mode:       pglogrepl.LogicalReplication,
		PluginArgs: []string{"proto_version '1'", "publication_names 'outbox_relay'"},
	}); err != nil {
		t.Fatal(err)
	}
	return conn
}

// newReader is a reader as stream makes it, for the outbox table;
// batchSize 0 is the default.
func newReader(t *testing.T, conn *pgconn.PgConn, batchSize int) *reader {
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := New(Config{Schema: table.Schema, Table: table.Name, Slot: "reader_test", BatchSize: batchSize}, nil, log)
	return &reader{s: s, conn: conn, h: newHandoff(handoffWhole, handoffMax), rels: map[uint32]relation{}}
}

// The messages, encoded as the walsender and pgoutput (protocol 1) send
// them. Times are left at zero: the reader does not read them.

const (
	outboxOID = 16400 // the outbox table's relation
	otherOID  = 16500 // another table of the database
)

func be(b []byte, v ...any) []byte {
	for _, x := range v {
		switch x := x.(type) {
		case byte:
			b = append(b, x)
		case uint16:
			b = binary.BigEndian.AppendUint16(b, x)
		case uint32:
			b = binary.BigEndian.AppendUint32(b, x)
		case pglogrepl.LSN:
			b = binary.BigEndian.AppendUint64(b, uint64(x))
		case string: // a C string
			b = append(append(b, x...), 0)
		default:
			panic(fmt.Sprintf("be: %T", x))
		}
	}
	return b
}

// xlog wraps a pgoutput message in an XLogData frame.
func xlog(wal []byte) *pgproto3.CopyData {
	return &pgproto3.CopyData{Data: append(be(nil, byte('w'), pglogrepl.LSN(0), pglogrepl.LSN(0), pglogrepl.LSN(0)), wal...)}
}

func keepalive(walEnd pglogrepl.LSN, reply bool) *pgproto3.CopyData {
	r := byte(0)
	if reply {
		r = 1
	}
	return &pgproto3.CopyData{Data: be(nil, byte('k'), walEnd, pglogrepl.LSN(0), r)}
}

func begin() *pgproto3.CopyData {
	return xlog(be(nil, byte('B'), pglogrepl.LSN(0), pglogrepl.LSN(0), uint32(777)))
}

func commit(end pglogrepl.LSN) *pgproto3.CopyData {
	return xlog(be(nil, byte('C'), byte(0), end-8, end, pglogrepl.LSN(0)))
}

// relationMsg describes a table whose columns are all text.
func relationMsg(oid uint32, name string, cols ...string) *pgproto3.CopyData {
	b := be(nil, byte('R'), oid, "public", name, byte('d'), uint16(len(cols)))
	for _, c := range cols {
		b = be(b, byte(0), c, uint32(25), uint32(0xffffffff))
	}
	return xlog(b)
}

// insert is a new row of relation oid, its values in text form.
func insert(oid uint32, values ...string) *pgproto3.CopyData {
	b := be(nil, byte('I'), oid, byte('N'), uint16(len(values)))
	for _, v := range values {
		b = be(b, byte('t'), uint32(len(v)))
		b = append(b, v...)
	}
	return xlog(b)
}

var (
	outboxRel = relationMsg(outboxOID, table.Name, "id", "event_type")
	otherRel  = relationMsg(otherOID, "other", "id", "body")
)

func outboxInsert(id int64) *pgproto3.CopyData {
	return insert(outboxOID, fmt.Sprint(id), "test.event")
}

// view is what the confirmation rules decide after each message.
type view struct {
	received, safe, sent pglogrepl.LSN
	ackDue               bool
	pending              []string // gathered, not handed off
	handedOff            []string // in the hand-off buffer, in order
}

func (r *reader) view() view {
	r.h.mu.Lock()
	defer r.h.mu.Unlock()
	return view{r.received, r.safe, r.sent, r.ackDue, idsOf(r.pending), append(idsOf(slices.Concat(r.h.queue...)), r.h.more...)}
}

func idsOf(ins []store.Insert) []string {
	ids := make([]string, len(ins))
	for i, in := range ins {
		ids[i] = in.Row.ID
	}
	return ids
}

func (v view) String() string {
	return fmt.Sprintf("received %s, safe %s, sent %s, ackDue %v, pending %v, handed off %v",
		v.received, v.safe, v.sent, v.ackDue, v.pending, v.handedOff)
}

func (v view) equal(w view) bool {
	return v.received == w.received && v.safe == w.safe && v.sent == w.sent && v.ackDue == w.ackDue &&
		slices.Equal(v.pending, w.pending) && slices.Equal(v.handedOff, w.handedOff)
}

type step struct {
	msg  *pgproto3.CopyData
	want view
}

func TestReaderConfirmationRules(t *testing.T) {
	conn := replicationConn(t)
	ids := func(v ...int64) []string {
		s := make([]string, len(v))
		for i, id := range v {
			s[i] = fmt.Sprint(id)
		}
		return s
	}
	tests := []struct {
		name      string
		batchSize int
		prepare   func(r *reader) // before the first step
		steps     []step
	}{{
		name: "outbox inserts are safe at their commit, once handed off",
		steps: []step{
			{begin(), view{}},
			{outboxRel, view{}},
			{outboxInsert(1), view{pending: ids(1)}},
			{outboxInsert(2), view{pending: ids(1, 2)}},
			{commit(0x100), view{received: 0x100, safe: 0x100, ackDue: true, handedOff: ids(1, 2)}},
			// A keepalive leaves the confirmation to the paced one
			// (ackDue); one that asks for a reply carries it.
			{keepalive(0x100, false), view{received: 0x100, safe: 0x100, ackDue: true, handedOff: ids(1, 2)}},
			{keepalive(0x100, true), view{received: 0x100, safe: 0x100, sent: 0x100, handedOff: ids(1, 2)}},
		},
	}, {
		name: "a keepalive inside a transaction does not advance",
		steps: []step{
			{begin(), view{}},
			{outboxRel, view{}},
			{outboxInsert(1), view{pending: ids(1)}},
			{keepalive(0x500, false), view{pending: ids(1)}},
			{keepalive(0x500, true), view{pending: ids(1)}},
			{commit(0x180), view{received: 0x180, safe: 0x180, ackDue: true, handedOff: ids(1)}},
			{keepalive(0x500, true), view{received: 0x500, safe: 0x500, sent: 0x500, handedOff: ids(1)}},
		},
	}, {
		name: "a keepalive between transactions makes the server's WAL end safe",
		steps: []step{
			{keepalive(0x1000, false), view{received: 0x1000, safe: 0x1000, ackDue: true}},
			{keepalive(0x1000, true), view{received: 0x1000, safe: 0x1000, sent: 0x1000}},
			{keepalive(0x800, false), view{received: 0x1000, safe: 0x1000, sent: 0x1000}},
			{keepalive(0x2000, true), view{received: 0x2000, safe: 0x2000, sent: 0x2000}},
		},
	}, {
		name: "a transaction without outbox rows is safe at its commit",
		steps: []step{
			{begin(), view{}},
			{otherRel, view{}},
			{insert(otherOID, "7", "not ours"), view{}},
			{commit(0x200), view{received: 0x200, safe: 0x200}},
		},
	}, {
		name: "an outbox table without an id column is left to the sweeper",
		steps: []step{
			{begin(), view{}},
			{relationMsg(outboxOID, table.Name, "event_id", "event_type"), view{}},
			{insert(outboxOID, "not-an-id", "test.event"), view{}},
			{commit(0x200), view{received: 0x200, safe: 0x200}},
		},
	}, {
		name:      "BatchSize hands off in the middle of a transaction",
		batchSize: 2,
		steps: []step{
			{begin(), view{}},
			{outboxRel, view{}},
			{outboxInsert(1), view{pending: ids(1)}},
			// Nothing is known to have arrived before the commit, so
			// the hand-off makes no position safe yet.
			{outboxInsert(2), view{ackDue: true, handedOff: ids(1, 2)}},
			{outboxInsert(3), view{ackDue: true, pending: ids(3), handedOff: ids(1, 2)}},
			{commit(0x300), view{received: 0x300, safe: 0x300, ackDue: true, handedOff: ids(1, 2, 3)}},
			{keepalive(0x300, true), view{received: 0x300, safe: 0x300, sent: 0x300, handedOff: ids(1, 2, 3)}},
			// A transaction handed off whole before its commit is
			// safe at the commit, and owes a confirmation.
			{begin(), view{received: 0x300, safe: 0x300, sent: 0x300, handedOff: ids(1, 2, 3)}},
			{outboxInsert(4), view{received: 0x300, safe: 0x300, sent: 0x300, pending: ids(4), handedOff: ids(1, 2, 3)}},
			{outboxInsert(5), view{received: 0x300, safe: 0x300, sent: 0x300, ackDue: true, handedOff: ids(1, 2, 3, 4, 5)}},
			{commit(0x400), view{received: 0x400, safe: 0x400, sent: 0x300, ackDue: true, handedOff: ids(1, 2, 3, 4, 5)}},
		},
	}, {
		// The rows are in the table, so ids the hand-off cannot take
		// are the sweeper's and their position is confirmed all the same:
		// a slow runner must not pin WAL.
		name: "ids dropped by a full hand-off are safe at their commit",
		prepare: func(r *reader) {
			r.h = newHandoff(1, 1)
			r.h.queue, r.h.queued = [][]store.Insert{byID(ids(99))}, 1
			r.s.shedding.Store(true) // so the put does not wait
		},
		steps: []step{
			{begin(), view{handedOff: ids(99)}},
			{outboxRel, view{handedOff: ids(99)}},
			{outboxInsert(1), view{pending: ids(1), handedOff: ids(99)}},
			{commit(0x100), view{received: 0x100, safe: 0x100, ackDue: true, handedOff: ids(99)}},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newReader(t, conn, tt.batchSize)
			if tt.prepare != nil {
				tt.prepare(r)
			}
			for i, s := range tt.steps {
				if err := r.handle(context.Background(), s.msg); err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				if got := r.view(); !got.equal(s.want) {
					t.Fatalf("after step %d (%c):\n got %s\nwant %s", i, s.msg.Data[0], got, s.want)
				}
				if s.want.sent != 0 && r.s.State().ConfirmedLSN != s.want.sent.String() {
					t.Errorf("after step %d: State().ConfirmedLSN = %q, want %s", i, r.s.State().ConfirmedLSN, s.want.sent)
				}
			}
		})
	}
}

// A hand-off that fails (the stream is stopping while the buffer is full)
// makes nothing safe: the ids were not handed off.
func TestReaderKeepsPositionWhenHandOffFails(t *testing.T) {
	r := newReader(t, nil, 0) // nothing here sends a status update
	r.h = newHandoff(1, 1)
	r.h.queue, r.h.queued = [][]store.Insert{byID([]string{"99"})}, 1
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, m := range []*pgproto3.CopyData{begin(), outboxRel, outboxInsert(1)} {
		if err := r.handle(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.handle(ctx, commit(0x100)); !errors.Is(err, context.Canceled) {
		t.Fatalf("commit with the hand-off full and the context done: %v, want context.Canceled", err)
	}
	want := view{received: 0x100, pending: []string{"1"}, handedOff: []string{"99"}}
	if got := r.view(); !got.equal(want) {
		t.Errorf("after the failed hand-off:\n got %s\nwant %s", got, want)
	}
}
