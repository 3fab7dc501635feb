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
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/internal/store"
	"github.com/outbox-relay/outbox-relay/relay"
)

// The stream's reader: what it hands on, whole or by id, and what it
// confirms. The confirmation rules are fed made-up messages: the reader
// sends its standby status updates on a real replication connection that
// streams from a temporary slot; the test never reads from it, so the
// server's own messages do not interfere. The positions used are below the
// slot's start, which the server ignores, as it ignores any confirmation
// that would move a slot backwards.

// walsender opens a replication connection (a walsender in database mode)
// to url as the stream opens its own; the test's cleanup closes it.
func walsender(t *testing.T, url string) *pgconn.PgConn {
	t.Helper()
	conf, err := parseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgconn.ConnectConfig(context.Background(), conf.repl)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeConn(context.Background(), conn) })
	return conn
}

// replicationConn opens a replication connection streaming from a
// temporary slot of a fresh database; it is closed (and the slot gone)
// when the test ends.
func replicationConn(t *testing.T) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := setup(t)
	b.exec(t, `CREATE PUBLICATION outbox_relay FOR TABLE portal_event_outbox WITH (publish = 'insert')`)
	conn := walsender(t, b.url)
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

// With the outbox's schema, the stream hands each inserted row on whole,
// as the claim would read it, so that it can be sent without a claim.
func TestInsertsAreDecodedWhole(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.cfg.Outbox = store.DefaultSchema(table)
	rec, _ := b.streaming(t)

	ctx := context.Background()
	var id string
	if err := b.pool.QueryRow(ctx, `INSERT INTO portal_event_outbox (event_type, payload)
		VALUES ('file.finalized', '{"name": "Überweisung März.pdf", "n": [1, 2]}') RETURNING id::text`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, 5*time.Second, "the row", func() bool { return rec.has(id) })

	var want store.Row
	var due time.Time
	if err := b.pool.QueryRow(ctx, `SELECT event_id::text, event_type, payload::text, created_at, next_attempt_at
		FROM portal_event_outbox WHERE id = $1`, id).Scan(&want.EventID, &want.Type, &want.Payload, &want.CreatedAt, &due); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	got := rec.rows[id]
	rec.mu.Unlock()
	if !got.Sendable {
		t.Fatalf("row %s handed on by id only, want it whole", id)
	}
	r := got.Row
	if r.ID != id || r.EventID != want.EventID || r.Type != want.Type || string(r.Payload) != string(want.Payload) ||
		!r.CreatedAt.Equal(want.CreatedAt) || r.Attempt != 1 {
		t.Errorf("decoded %+v, payload %s\nwant    %+v, payload %s", r, r.Payload, want, want.Payload)
	}
	// Due is on this host's clock, which here is the server's, to the
	// round trip of the session's clock reading.
	if d := got.Due.Sub(due).Abs(); d > time.Second {
		t.Errorf("Due %s is %s off next_attempt_at %s", got.Due, d, due)
	}
}

// Rows committed before a session took the slot may have been announced,
// and be in flight unclaimed, in an earlier session: the new one leaves
// them to the sweeper (it signals Dropped) and hands on only later rows.
func TestReplayedRowsAreLeftToTheSweeper(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.cfg.Outbox = store.DefaultSchema(table)
	first := newRecorder()
	s, stop := b.start(t, first)
	waitStreaming(t, s)
	stop()

	before := []string{b.insert(t), b.insert(t)}
	rec := newRecorder()
	s, _ = b.start(t, rec)
	waitStreaming(t, s)
	after := b.insert(t)
	pgtest.WaitFor(t, 5*time.Second, "the row committed after the session began", func() bool { return rec.has(after) })
	// WAL comes in commit order: the earlier rows were read before it.
	if rec.has(before[0]) || rec.has(before[1]) {
		t.Errorf("rows committed before the session were handed on: %v", before)
	}
	select {
	case <-s.Dropped():
	default:
		t.Error("the sweeper was not told of the rows left to it")
	}
}

// The reader's receive context is reused while it lasts and never ends
// later than asked.
func TestRecvDeadline(t *testing.T) {
	parent, cancelParent := context.WithCancel(context.Background())
	defer cancelParent()
	var rd recvDeadline
	defer rd.stop()
	t0 := time.Now().Add(time.Hour)

	c1 := rd.until(parent, t0)
	if dl, ok := c1.Deadline(); !ok || !dl.Equal(t0) {
		t.Fatalf("deadline %v, want %v", dl, t0)
	}
	if c := rd.until(parent, t0.Add(time.Minute)); c != c1 {
		t.Error("a later time made a new context; the current one ends sooner and may serve")
	}
	c2 := rd.until(parent, t0.Add(-time.Minute))
	if c2 == c1 {
		t.Fatal("an earlier time kept a context that ends too late")
	}
	if c1.Err() == nil {
		t.Error("the replaced context was not cancelled")
	}
	if dl, _ := c2.Deadline(); !dl.Equal(t0.Add(-time.Minute)) {
		t.Errorf("deadline %v, want %v", dl, t0.Add(-time.Minute))
	}

	past := rd.until(parent, time.Now().Add(-time.Second)) // ended at once
	if past.Err() == nil {
		t.Fatal("a context past its deadline is not done")
	}
	if c := rd.until(parent, t0); c == past || c.Err() != nil {
		t.Error("an ended context was handed out again")
	}

	cancelParent()
	if c := rd.until(parent, t0); c.Err() == nil {
		t.Error("the parent's end did not reach the receive context")
	}
}

// Each insert reaches the deliverer by the stream alone (nothing sweeps
// here). How fast is the bench's latency row, not a test's business.
func TestInsertsReachTheDeliverer(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rec, s := b.streaming(t)

	var worst time.Duration
	for range 20 {
		start := time.Now()
		id := b.insert(t)
		pgtest.WaitFor(t, 10*time.Second, fmt.Sprintf("id %s", id), func() bool { return rec.has(id) })
		worst = max(worst, time.Since(start))
	}
	t.Logf("worst insert-to-DeliverIDs latency of 20: %s", worst)
	if st := s.State(); st.Role != RoleStreamer || !st.Connected || st.LastError != "" || st.ConfirmedLSN == "" {
		t.Errorf("State() = %+v, want a connected streamer with a confirmed LSN", st)
	}
}

func TestRolledBackTransactionDeliversNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rec, _ := b.streaming(t)

	ctx := context.Background()
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var rolledBack string
	if err := tx.QueryRow(ctx, `INSERT INTO portal_event_outbox (event_type) VALUES ('x') RETURNING id::text`).Scan(&rolledBack); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// The stream is ordered: once a later commit arrived, the rolled-back
	// row would have come before it.
	marker := b.insert(t)
	pgtest.WaitFor(t, 5*time.Second, "the marker row", func() bool { return rec.has(marker) })
	if rec.count(rolledBack) != 0 {
		t.Errorf("rolled-back id %s was handed to the deliverer", rolledBack)
	}
}

func TestMultiRowTransactionDeliversAll(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rec, _ := b.streaming(t)

	rows, err := b.pool.Query(context.Background(),
		`INSERT INTO portal_event_outbox (event_type) SELECT 'bulk' FROM generate_series(1, 250) RETURNING id::text`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, 5*time.Second, "all 250 ids", func() bool { return rec.has(ids...) })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, batch := range rec.batches {
		if len(batch) > b.cfg.BatchSize {
			t.Errorf("a batch of %d ids, more than BatchSize %d", len(batch), b.cfg.BatchSize)
		}
	}
	for _, id := range ids {
		if rec.seen[id] != 1 {
			t.Errorf("id %s handed off %d times", id, rec.seen[id])
		}
	}
}

// walMark is the WAL position now, past what this test wrote so far.
func (b *bundle) walMark(t *testing.T) string {
	t.Helper()
	var mark string
	if err := b.pool.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&mark); err != nil {
		t.Fatal(err)
	}
	return mark
}

// walLag reads how far the slot is behind mark (0 when past it), -1 when
// the slot is gone. The mark, not the server's current position, because
// the parallel tests write WAL on the same server all the time.
func (b *bundle) walLag(t *testing.T, mark string) (flushLag, retained int64) {
	t.Helper()
	err := b.pool.QueryRow(context.Background(), `SELECT
	coalesce(greatest(pg_wal_lsn_diff($2::pg_lsn, confirmed_flush_lsn), 0), -1)::bigint,
	coalesce(greatest(pg_wal_lsn_diff($2::pg_lsn, restart_lsn), 0), -1)::bigint
FROM pg_replication_slots WHERE slot_name = $1`, b.cfg.Slot, mark).Scan(&flushLag, &retained)
	if err != nil {
		t.Fatal(err)
	}
	return flushLag, retained
}

func TestSlotDoesNotPinWAL(t *testing.T) {
	t.Parallel()
	for _, blocked := range []bool{false, true} {
		name := "idle"
		if blocked {
			name = "deliverer blocked"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			if blocked {
				// A buffer this small fills with the flood below, as
				// the real one fills under a deliverer that stays behind.
				b.tweak = func(s *Stream) { s.handoffIDs = 400 }
			}
			rec, s := b.streaming(t)
			if blocked {
				gate := make(chan struct{})
				rec.mu.Lock()
				rec.gate = gate
				rec.mu.Unlock()
				t.Cleanup(func() { close(gate) })
				b.insert(t)
				select {
				case <-rec.entered:
				case <-time.After(5 * time.Second):
					t.Fatal("the deliverer was not called")
				}
			}
			const mb = 1 << 20
			ctx := context.Background()
			// ~50 MB of WAL for a table outside the publication, in
			// chunks; the slot must follow after each.
			var mark string
			for range 10 {
				if _, err := b.pool.Exec(ctx, `INSERT INTO other (body) SELECT repeat(md5(g::text), 30) FROM generate_series(1, 5000) g`); err != nil {
					t.Fatal(err)
				}
				if blocked {
					// More outbox rows than the hand-off buffer holds, one
					// transaction each: with the deliverer stuck they must
					// be left to the sweeper at once, not slow the reader
					// down or stop it confirming.
					outbox := pgx.Identifier{b.cfg.Schema, b.cfg.Table}.Sanitize()
					for range 300 {
						if _, err := b.pool.Exec(ctx, `INSERT INTO `+outbox+` (event_type) VALUES ('flood')`); err != nil {
							t.Fatal(err)
						}
					}
				}
				mark = b.walMark(t)
				pgtest.WaitFor(t, 10*time.Second, "confirmed_flush_lsn to follow", func() bool {
					lag, _ := b.walLag(t, mark)
					return lag >= 0 && lag < 4*mb
				})
			}
			// restart_lsn moves at running-transactions records, which a
			// checkpoint writes.
			pgtest.WaitFor(t, 20*time.Second, "retained WAL to shrink after a checkpoint", func() bool {
				if _, err := b.pool.Exec(ctx, `CHECKPOINT`); err != nil {
					t.Fatal(err)
				}
				_, retained := b.walLag(t, mark)
				return retained >= 0 && retained < 4*mb
			})
			lag, retained := b.walLag(t, mark)
			t.Logf("after ~50 MB of other WAL: flush lag %d kB, retained %d kB", lag/1024, retained/1024)
			if blocked {
				select {
				case <-s.Dropped():
				default:
					t.Error("ids were left to the sweeper without nudging it")
				}
			}
		})
	}
}

// TestEndToEnd runs the stream with the real Deliverer and a real runner,
// and no sweeper: a row reaches the runner only through the stream.
func TestEndToEnd(t *testing.T) {
	t.Parallel()
	b := setup(t)
	runner := relaytest.NewRunner(t)
	d := relay.New(relay.Config{
		RunnerURL:     runner.URL(),
		HTTPTimeout:   5 * time.Second,
		Concurrency:   4,
		MaxAttempts:   5,
		Backoff:       relay.Backoff{Base: time.Second, Max: time.Minute},
		ShutdownGrace: time.Second,
	}, store.New(b.pool, store.DefaultSchema(table)), slog.New(slog.DiscardHandler), nil)
	// Started first, so it stops after the stream has stopped: the
	// Deliverer outlives its claimers, as in cmd.
	background(t, "Deliverer.Run", d.Run)

	s, _ := b.start(t, d)
	waitStreaming(t, s)

	ctx := context.Background()
	for range 5 {
		var eventID string
		start := time.Now()
		if err := b.pool.QueryRow(ctx, `INSERT INTO portal_event_outbox (event_type, payload)
			VALUES ('file.finalized', '{"n": 1}') RETURNING event_id::text`).Scan(&eventID); err != nil {
			t.Fatal(err)
		}
		var took time.Duration
		pgtest.WaitFor(t, 5*time.Second, "the runner to get "+eventID, func() bool {
			at, ok := runner.FirstReceipts()[eventID]
			took = at.Sub(start)
			return ok
		})
		t.Logf("insert to runner: %s", took)
		var status string
		pgtest.WaitFor(t, 5*time.Second, "the row to be marked delivered", func() bool {
			err := b.pool.QueryRow(ctx, `SELECT status FROM portal_event_outbox WHERE event_id = $1`, eventID).Scan(&status)
			return err == nil && status == store.StatusDelivered
		})
	}
}
