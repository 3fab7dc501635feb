package store

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// tuple reads every column of the row whose event type is typ in its text
// form, as pgoutput prints it in a replication session with DateStyle ISO
// and TimeZone UTC (the output function of each column's type), with the
// column names in table order.
func tuple(t *testing.T, pool *pgxpool.Pool, s *Schema, typ string) (names []string, values []*string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SET DateStyle = ISO; SET TimeZone = 'UTC'`); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = conn.Exec(ctx, `RESET DateStyle; RESET TimeZone`) }()
	rows, _ := conn.Query(ctx, `SELECT attname FROM pg_attribute
		WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, s.Table.Ident())
	if names, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	// format() calls the type's output function, as pgoutput does: a cast
	// to text would drop a char(n) column's padding.
	cols := make([]string, len(names))
	for i, n := range names {
		cols[i] = fmt.Sprintf("CASE WHEN %[1]s IS NOT NULL THEN format('%%s', %[1]s) END", quoteIdent(n))
	}
	values = make([]*string, len(names))
	dest := make([]any, len(names))
	for i := range values {
		dest[i] = &values[i]
	}
	q := fmt.Sprintf("SELECT %s FROM %s WHERE %s = $1", strings.Join(cols, ", "), s.Table.Ident(), s.col(RoleEventType))
	if err := conn.QueryRow(ctx, q, typ).Scan(dest...); err != nil {
		t.Fatal(err)
	}
	return names, values
}

func decode(d *TupleDecoder, values []*string) (Insert, bool) {
	return d.Decode(func(i int) ([]byte, bool) {
		if values[i] == nil {
			return nil, true
		}
		return []byte(*values[i]), false
	})
}

// exerciseFresh checks, on a mapped table, that a row decoded from its
// tuple is the row a claim reads, and that the writes of a send without a
// claim are conditional: they count the attempt, and they do nothing once
// someone else claimed the row.
func exerciseFresh(t *testing.T, pool *pgxpool.Pool, st *Store) {
	t.Helper()
	ctx := context.Background()
	s := st.Schema()
	x := s.expand
	types := []string{"f1", "f2", "f3"}
	insertTypes(t, pool, s, types...)
	names, _ := tuple(t, pool, s, "f1")
	d, ok := s.TupleDecoder(names)
	naive := s.Columns[RoleNextAttemptAt].Type != "timestamptz" || s.Columns[RoleCreatedAt].Type != "timestamptz"
	if ok == naive {
		t.Fatalf("TupleDecoder ok = %v with next_attempt_at %s, created_at %s; want ok only for timestamptz",
			ok, s.Columns[RoleNextAttemptAt].Type, s.Columns[RoleCreatedAt].Type)
	}
	if naive {
		// Such rows are claimed first, as exerciseStore checks.
		mustExec(t, pool, x(`DELETE FROM {table} WHERE {event_type} IN ('f1', 'f2', 'f3')`))
		return
	}
	fresh := map[string]Insert{}
	for _, typ := range types {
		_, values := tuple(t, pool, s, typ)
		in, ok := decode(d, values)
		if !ok || !in.Sendable {
			t.Fatalf("row %s not decoded: %v", typ, values)
		}
		fresh[typ] = in
	}
	c, err := st.ClaimIDs(ctx, []string{fresh["f1"].Row.ID}, time.Minute, 25)
	if err != nil || len(c.Rows) != 1 {
		t.Fatalf("ClaimIDs = %+v, %v", c, err)
	}
	claimed, got := c.Rows[0], fresh["f1"].Row
	if got.ID != claimed.ID || got.EventID != claimed.EventID || got.Type != claimed.Type ||
		string(got.Payload) != string(claimed.Payload) || !got.CreatedAt.Equal(claimed.CreatedAt) || got.Attempt != claimed.Attempt {
		t.Errorf("decoded %+v (payload %s)\nclaimed %+v (payload %s)", got, got.Payload, claimed, claimed.Payload)
	}

	// f1 was claimed by "someone else": the fresh outcome of it is a
	// no-op. f2's is written, counting the attempt. f3's send ran long:
	// its lease claims it once, and its outcome is then a claimed row's.
	if ok, err := st.Lease(ctx, fresh["f3"].Row.ID, 0, time.Minute); err != nil || !ok {
		t.Fatalf("Lease = %v, %v", ok, err)
	}
	if ok, err := st.Lease(ctx, fresh["f3"].Row.ID, 0, time.Minute); err != nil || ok {
		t.Errorf("a second Lease claimed the row again: %v, %v", ok, err)
	}
	refused, _, err := st.Record(ctx, []Result{
		{ID: fresh["f1"].Row.ID, Attempt: 1, Status: StatusDelivered, Kind: KindFresh},
		{ID: fresh["f2"].Row.ID, Attempt: 1, Status: StatusDelivered, Kind: KindFresh},
		{ID: fresh["f3"].Row.ID, Attempt: 1, Status: StatusDelivered},
	})
	if err != nil || refused != nil {
		t.Fatal(err, refused)
	}
	for typ, want := range map[string]string{"f1": s.Statuses.Pending, "f2": s.Statuses.Delivered, "f3": s.Statuses.Delivered} {
		var status string
		var tries int
		if err := pool.QueryRow(ctx, x(`SELECT {status}::text, {attempts} FROM {table} WHERE {event_type} = $1`), typ).Scan(&status, &tries); err != nil {
			t.Fatal(err)
		}
		if status != want || tries != 1 {
			t.Errorf("row %s: status %q, attempts %d; want %q, 1", typ, status, tries, want)
		}
	}
	mustExec(t, pool, x(`DELETE FROM {table} WHERE {event_type} IN ('f1', 'f2', 'f3')`))
}

// What the decoder leaves to a claim: rows not pending, not readable, or of
// a table whose rows are ordered per key.
func TestTupleDecoderLeavesOddRowsToTheClaim(t *testing.T) {
	s := DefaultSchema(Table{Schema: "public", Name: "outbox"})
	names := []string{"id", "event_id", "event_type", "payload", "status", "attempts", "next_attempt_at", "last_error", "created_at", "delivered_at"}
	d, ok := s.TupleDecoder(names)
	if !ok {
		t.Fatal("no decoder for the default table")
	}
	p := func(v string) *string { return &v }
	row := func(change func(v []*string)) []*string {
		v := []*string{p("7"), p("3f1e0c52-2a58-4c55-9a4e-9d7f1f0f8f11"), p("t"), p(`{"a": 1}`), p("pending"), p("0"),
			p("2026-12-01 04:16:28.123456+00"), nil, p("2026-12-01 04:16:28.123456+00"), nil}
		if change != nil {
			change(v)
		}
		return v
	}
	in, ok := decode(d, row(nil))
	if !ok || in.Row.ID != "7" || in.Row.Attempt != 1 || in.Due.Format(time.RFC3339Nano) != "2026-12-01T04:16:28.123456Z" {
		t.Fatalf("decoded %+v, %v", in, ok)
	}
	for name, change := range map[string]func(v []*string){
		"delivered":          func(v []*string) { v[4] = p("delivered") },
		"NULL event_id":      func(v []*string) { v[1] = nil },
		"empty event_id":     func(v []*string) { v[1] = p("") },
		"NULL event_type":    func(v []*string) { v[2] = nil },
		"NULL attempts":      func(v []*string) { v[5] = nil },
		"infinity":           func(v []*string) { v[6] = p("infinity") },
		"unreadable created": func(v []*string) { v[8] = p("yesterday") },
	} {
		if _, ok := decode(d, row(change)); ok {
			t.Errorf("%s: decoded, want it left to the claim", name)
		}
	}
	if in, ok := decode(d, row(func(v []*string) { v[3] = nil })); !ok || string(in.Row.Payload) != "null" {
		t.Errorf("NULL payload: %s, %v; want null, as the claim sends it", in.Row.Payload, ok)
	}
	if _, ok := s.TupleDecoder(names[1:]); ok {
		t.Error("a decoder for a relation without the id column")
	}
	cols := DefaultColumns()
	cols[RoleOrderingKey] = "key"
	if _, ok := Planned(s.Table, cols, DefaultStatuses()).TupleDecoder(append(names, "key")); ok {
		t.Error("a decoder for rows ordered per key")
	}
	ints := Planned(s.Table, DefaultColumns(), Statuses{Pending: "0", Delivered: "1", Dead: "2"})
	di, _ := ints.TupleDecoder(names)
	if _, ok := decode(di, row(func(v []*string) { v[4] = p("0") })); !ok {
		t.Error("integer status 0 not read as pending")
	}
}

// A char(n) column comes from the stream padded to n characters, and from
// a claim (a cast to text) without the padding: the decoder reads it as
// the claim does, so the runner gets the same traceparent either way.
func TestTupleDecoderTrimsCharColumns(t *testing.T) {
	t.Parallel()
	pool, table := tracedTable(t, `ADD COLUMN tp char(64)`)
	ctx := context.Background()
	mustExec(t, pool, `INSERT INTO traced (event_type, tp) VALUES ('traced', $1)`, tp)
	cols, err := ParseColumns("traceparent=tp")
	if err != nil {
		t.Fatal(err)
	}
	s, err := Inspect(ctx, pool, table, cols, DefaultStatuses())
	if err != nil {
		t.Fatal(err)
	}
	names, values := tuple(t, pool, s, "traced")
	if tpAt := slices.Index(names, "tp"); tpAt < 0 || values[tpAt] == nil || len(*values[tpAt]) != 64 {
		t.Fatalf("the tuple's tp is not padded to 64 characters: %v", values)
	}
	d, ok := s.TupleDecoder(names)
	if !ok {
		t.Fatal("no decoder")
	}
	in, ok := decode(d, values)
	if !ok || in.Row.Traceparent != tp {
		t.Errorf("decoded traceparent %q (%v), want %q", in.Row.Traceparent, ok, tp)
	}
	c, err := New(pool, s).ClaimIDs(ctx, []string{in.Row.ID}, lease, 25)
	if err != nil || len(c.Rows) != 1 || c.Rows[0].Traceparent != tp {
		t.Errorf("claimed %+v, %v; want traceparent %q", c.Rows, err, tp)
	}
}
