package store

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// globToLike escapes LIKE's own wildcards and escape character, so that
// only * and ? match more than themselves.
func TestGlobToLike(t *testing.T) {
	t.Parallel()
	for glob, want := range map[string]string{
		"order.created": "order.created",
		"order.*":       "order.%",
		"a?c":           "a_c",
		"100%_done":     `100\%\_done`,
		`back\slash`:    `back\\slash`,
		"*.*":           "%.%",
	} {
		if got := globToLike(glob); got != want {
			t.Errorf("globToLike(%q) = %q, want %q", glob, got, want)
		}
	}
}

// Requeue moves the dead rows a filter selects back to pending, due now,
// with attempts and error reset; a dry run only counts them; delivered and
// pending rows are never touched, whatever the filter.
func TestRequeue(t *testing.T) {
	t.Parallel()
	st := setup(t)
	const (
		orderOld = iota // dead, created two hours ago
		orderNew        // dead, just created
		underscore
		anyChar
		percent
		deliveredRow
		pendingRow
	)
	rows := []seed{
		orderOld:     {typ: "order.created", status: StatusDead, created: -2 * time.Hour},
		orderNew:     {typ: "order.updated", status: StatusDead},
		underscore:   {typ: "a_b", status: StatusDead},
		anyChar:      {typ: "axb", status: StatusDead},
		percent:      {typ: "a%b", status: StatusDead},
		deliveredRow: {typ: "order.created", status: StatusDelivered, created: -2 * time.Hour},
		pendingRow:   {typ: "order.created"},
	}
	for i := range rows {
		rows[i].attempts, rows[i].lastError = 5, "runner: 400"
	}
	tests := []struct {
		name   string
		filter RequeueFilter
		want   []int
		ids    []int // indexes into rows, for filter.IDs
	}{
		{"every dead row", RequeueFilter{}, []int{orderOld, orderNew, underscore, anyChar, percent}, nil},
		{"ids, dead ones only", RequeueFilter{}, []int{orderOld, underscore}, []int{orderOld, underscore, deliveredRow, pendingRow}},
		{"type glob *", RequeueFilter{Type: "order.*"}, []int{orderOld, orderNew}, nil},
		{"? is one character", RequeueFilter{Type: "a?b"}, []int{underscore, anyChar, percent}, nil},
		{"_ is literal", RequeueFilter{Type: "a_b"}, []int{underscore}, nil},
		{"% is literal", RequeueFilter{Type: "a%b"}, []int{percent}, nil},
		{"since", RequeueFilter{Since: time.Now().Add(-time.Hour)}, []int{orderNew, underscore, anyChar, percent}, nil},
		{"all filters at once", RequeueFilter{Type: "order.*", Since: time.Now().Add(-time.Hour)}, []int{orderNew}, []int{orderOld, orderNew, underscore}},
		{"nothing matches", RequeueFilter{Type: "user.*"}, nil, nil},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			ts := withTable(t, st.pool, fmt.Sprintf("outbox_%d", i))
			id := add(t, ts, rows...)
			f := tt.filter
			for _, k := range tt.ids {
				f.IDs = append(f.IDs, id[k])
			}
			before := make([]state, len(id))
			for k := range id {
				before[k] = get(t, ts, id[k])
			}
			if n, err := ts.Requeue(ctx, f, true); err != nil || n != int64(len(tt.want)) {
				t.Errorf("dry run = %d, %v; want %d", n, err, len(tt.want))
			}
			for k := range id {
				if got := get(t, ts, id[k]); !sameState(got, before[k]) {
					t.Errorf("the dry run changed row %d: %s", k, show(got))
				}
			}
			if n, err := ts.Requeue(ctx, f, false); err != nil || n != int64(len(tt.want)) {
				t.Errorf("requeue = %d, %v; want %d", n, err, len(tt.want))
			}
			requeued := state{Status: StatusPending}
			for k := range id {
				want := before[k]
				if slices.Contains(tt.want, k) {
					want = requeued
				}
				if got := get(t, ts, id[k]); !sameState(got, want) {
					t.Errorf("row %d = %s, want %s", k, show(got), show(want))
				}
			}
		})
	}
}

// Requeue of delivered rows moves them back to pending as if never tried,
// event_id and payload kept, the oldest first up to the limit; it counts
// every match apart from the limit, and never touches dead or pending rows.
func TestRequeueDelivered(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := setup(t)
	id := add(t, st,
		seed{typ: "order.created", status: StatusDelivered, attempts: 3, lastError: "old", created: -3 * time.Hour},
		seed{typ: "order.created", status: StatusDelivered, attempts: 1, created: -2 * time.Hour},
		seed{typ: "order.updated", status: StatusDelivered, attempts: 1, created: -time.Hour},
		seed{typ: "user.created", status: StatusDelivered, attempts: 1, created: -time.Hour},
		seed{typ: "order.created", status: StatusDead, attempts: 5, created: -4 * time.Hour},
		seed{typ: "order.created", attempts: 2, next: time.Hour, created: -4 * time.Hour},
	)
	before := make([]state, len(id))
	var events []string
	for k := range id {
		before[k] = get(t, st, id[k])
		var e string
		if err := st.pool.QueryRow(ctx, `SELECT event_id::text FROM portal_event_outbox WHERE id = $1::bigint`, id[k]).Scan(&e); err != nil {
			t.Fatal(err)
		}
		events = append(events, e)
	}
	f := RequeueFilter{Status: StatusDelivered, Type: "order.*", Limit: 2}
	if n, err := st.RequeueMatches(ctx, f); err != nil || n != 3 {
		t.Errorf("matches = %d, %v; want 3", n, err)
	}
	if n, err := st.Requeue(ctx, f, true); err != nil || n != 2 {
		t.Errorf("dry run = %d, %v; want 2", n, err)
	}
	for k := range id {
		if got := get(t, st, id[k]); !sameState(got, before[k]) {
			t.Errorf("the dry run changed row %d: %s", k, show(got))
		}
	}
	if n, err := st.Requeue(ctx, f, false); err != nil || n != 2 {
		t.Errorf("requeue = %d, %v; want 2", n, err)
	}
	for k, want := range []state{{Status: StatusPending}, {Status: StatusPending}, before[2], before[3], before[4], before[5]} {
		if got := get(t, st, id[k]); !sameState(got, want) {
			t.Errorf("row %d = %s, want %s", k, show(got), show(want))
		}
		var e string
		if err := st.pool.QueryRow(ctx, `SELECT event_id::text FROM portal_event_outbox WHERE id = $1::bigint`, id[k]).Scan(&e); err != nil || e != events[k] {
			t.Errorf("row %d: event_id %s, want %s (%v)", k, e, events[k], err)
		}
	}
	// By id and since, without a limit: only delivered rows move.
	f = RequeueFilter{Status: StatusDelivered, IDs: []string{id[3], id[4], id[5]}, Since: time.Now().Add(-90 * time.Minute)}
	if n, err := st.Requeue(ctx, f, false); err != nil || n != 1 {
		t.Errorf("requeue by id since = %d, %v; want 1", n, err)
	}
	if got := get(t, st, id[3]); !sameState(got, state{Status: StatusPending}) {
		t.Errorf("row 3 = %s", show(got))
	}
}

// DeleteDelivered deletes only delivered rows delivered before the cutoff,
// at most limit at a time.
func TestDeleteDelivered(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := setup(t)
	old := seed{status: StatusDelivered, created: -3 * time.Hour, delivered: -2 * time.Hour}
	id := add(t, st, old, old, old,
		seed{status: StatusDelivered, created: -3 * time.Hour}, // delivered just now
		seed{status: StatusDead, created: -3 * time.Hour},
		seed{created: -3 * time.Hour, next: -3 * time.Hour},
	)
	cutoff := time.Now().Add(-time.Hour)
	for _, want := range []int64{2, 1, 0} {
		if n, err := st.DeleteDelivered(ctx, cutoff, 2); err != nil || n != want {
			t.Fatalf("DeleteDelivered = %d, %v; want %d", n, err, want)
		}
	}
	rows, _ := st.pool.Query(ctx, `SELECT id::text FROM portal_event_outbox ORDER BY id`)
	left, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if !sameSet(left, id[3:]) {
		t.Errorf("rows left = %v, want %v", left, id[3:])
	}
}

// Stats counts each status and ages the oldest pending row; delivered rows
// are counted only when asked for.
func TestStats(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := setup(t)
	if got, err := st.Stats(ctx, true); err != nil || got != (Stats{}) {
		t.Fatalf("Stats of an empty table = %+v, %v; want zeros", got, err)
	}
	delivered := seed{status: StatusDelivered, created: -2 * time.Hour}
	add(t, st,
		seed{created: -time.Hour}, seed{},
		delivered, delivered, delivered,
		seed{status: StatusDead, created: -3 * time.Hour},
	)
	for _, withDelivered := range []bool{false, true} {
		got, err := st.Stats(ctx, withDelivered)
		if err != nil {
			t.Fatal(err)
		}
		want := Stats{Pending: 2, Dead: 1}
		if withDelivered {
			want.Delivered = 3
		}
		if !near(got.OldestPending, time.Hour) {
			t.Errorf("Stats(%v).OldestPending = %s, want about an hour", withDelivered, got.OldestPending)
		}
		got.OldestPending = 0
		if got != want {
			t.Errorf("Stats(%v) = %+v, want %+v", withDelivered, got, want)
		}
	}
}
