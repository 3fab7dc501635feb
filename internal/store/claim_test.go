package store

import (
	"context"
	"slices"
	"testing"
	"time"
)

const lease = 30 * time.Second

// ClaimIDs takes only those of the ids that are pending and due, counts
// the attempt and pushes next_attempt_at past the lease; the rest stay as
// they were.
func TestClaimIDsTakesPendingDueRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := setup(t)
	id := add(t, st,
		seed{typ: "order.created", attempts: 2, next: -time.Second}, // a retry, due
		seed{},                                // never tried: ClaimIDs has no grace
		seed{attempts: 1, next: time.Hour},    // a retry, not due
		seed{status: StatusDelivered},         // done
		seed{status: StatusDead, attempts: 5}, // given up
	)
	c, err := st.ClaimIDs(ctx, append(slices.Clone(id), "1099511627776"), lease, 5)
	claimed, buried := c.Rows, c.Dead
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(claimed); !sameSet(got, id[:2]) || len(buried) != 0 {
		t.Fatalf("claimed %v, buried %v; want %v and none", got, buried, id[:2])
	}
	for _, r := range claimed {
		if r.ID != id[0] {
			continue
		}
		if r.Type != "order.created" || string(r.Payload) != `{"n": 1}` || len(r.EventID) != 36 || r.Attempt != 3 || r.CreatedAt.IsZero() {
			t.Errorf("claimed row = %+v", r)
		}
	}
	for i, want := range []state{
		{Status: StatusPending, Attempts: 3, NextIn: lease},
		{Status: StatusPending, Attempts: 1, NextIn: lease},
		{Status: StatusPending, Attempts: 1, NextIn: time.Hour},
		{Status: StatusDelivered, Attempts: 0, Delivered: true},
		{Status: StatusDead, Attempts: 5},
	} {
		got := get(t, st, id[i])
		if got.Status != want.Status || got.Attempts != want.Attempts || got.Delivered != want.Delivered ||
			(want.Status == StatusPending && !near(got.NextIn, want.NextIn)) {
			t.Errorf("row %d after the claim = %+v, want %+v", i, got, want)
		}
	}
}

// A row locked by another transaction is skipped, not waited for, and its
// attempt is not counted; once the lock goes it can be claimed.
func TestClaimSkipsLockedRows(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st := setup(t)
	id := add(t, st, seed{next: -time.Minute}, seed{next: -time.Minute})
	tx, err := st.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT 1 FROM portal_event_outbox WHERE id = $1 FOR UPDATE`, id[0]); err != nil {
		t.Fatal(err)
	}
	c, err := st.ClaimIDs(ctx, id, lease, 5)
	claimed, _ := c.Rows, c.Dead
	if err != nil || !sameSet(ids(claimed), id[1:]) {
		t.Fatalf("ClaimIDs with row %s locked = %v, %v; want %v", id[0], ids(claimed), err, id[1:])
	}
	c, err = st.ClaimDue(ctx, 10, 0, lease, 5, nil)
	claimed, _ = c.Rows, c.Dead
	if err != nil || len(claimed) != 0 {
		t.Fatalf("ClaimDue with one row locked, one leased = %v, %v; want none", ids(claimed), err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	c, err = st.ClaimIDs(ctx, id[:1], lease, 5)
	claimed, _ = c.Rows, c.Dead
	if err != nil || len(claimed) != 1 || claimed[0].Attempt != 1 {
		t.Fatalf("ClaimIDs after the lock went = %+v, %v; want row %s at attempt 1", claimed, err, id[0])
	}
}

// A row that used every attempt (the relay died holding it each time)
// comes back buried, as dead, instead of being sent again.
func TestClaimBuriesRowsWithNoAttemptLeft(t *testing.T) {
	t.Parallel()
	st := setup(t)
	const maxAttempts = 3
	tests := []struct {
		name     string
		attempts int // before the claim
		buried   bool
	}{
		{"first attempt", 0, false},
		{"last attempt", maxAttempts - 1, false},
		{"every attempt used", maxAttempts, true},
		{"past the maximum (it was lowered)", maxAttempts + 4, true},
	}
	rows := make([]seed, len(tests))
	for i, tt := range tests {
		rows[i] = seed{attempts: tt.attempts, next: -time.Second}
	}
	id := add(t, st, rows...)
	c, err := st.ClaimIDs(context.Background(), id, lease, maxAttempts)
	claimed, buried := c.Rows, c.Dead
	if err != nil {
		t.Fatal(err)
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := Result{ID: id[i], Attempt: tt.attempts + 1, Status: StatusDead, Recorded: true}
			gotBuried := slices.Contains(buried, want)
			gotClaimed := slices.ContainsFunc(claimed, func(r Row) bool { return r.ID == id[i] && r.Attempt == tt.attempts+1 })
			if gotBuried != tt.buried || gotClaimed == tt.buried {
				t.Fatalf("claimed %+v, buried %+v; want row %s buried: %v", claimed, buried, id[i], tt.buried)
			}
			s := get(t, st, id[i])
			if tt.buried && (s.Status != StatusDead || s.LastError == nil || *s.LastError == "") {
				t.Errorf("buried row = %+v, want dead with a reason", s)
			}
			if !tt.buried && (s.Status != StatusPending || s.LastError != nil) {
				t.Errorf("claimed row = %+v, want pending", s)
			}
		})
	}
}

// ClaimDue leaves rows never tried to the stream for grace, takes retries
// as soon as they are due, takes the longest-due first and stops at limit.
func TestClaimDue(t *testing.T) {
	t.Parallel()
	st := setup(t)
	// The rows, by index: which a case expects is named by these.
	const (
		fresh      = iota // never tried, just inserted
		freshOld          // never tried, older than the grace
		retryDue          // tried, due a second ago
		retryLater        // tried, due in an hour
		dead              // old, but given up
		delivered         // old, but done
	)
	rows := []seed{
		fresh:      {},
		freshOld:   {next: -2 * time.Minute},
		retryDue:   {attempts: 1, next: -time.Second},
		retryLater: {attempts: 1, next: time.Hour},
		dead:       {status: StatusDead, attempts: 1, next: -time.Hour},
		delivered:  {status: StatusDelivered, attempts: 1, next: -time.Hour},
	}
	tests := []struct {
		name  string
		limit int
		grace time.Duration
		want  []int
	}{
		{"grace leaves fresh rows", 10, time.Minute, []int{freshOld, retryDue}},
		{"no grace takes fresh rows", 10, 0, []int{fresh, freshOld, retryDue}},
		{"a long grace still takes retries", 10, time.Hour, []int{retryDue}},
		{"limit takes the longest due first", 1, 0, []int{freshOld}},
		{"limit of two", 2, 0, []int{freshOld, retryDue}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := withTable(t, st.pool, "outbox_"+string(rune('a'+i)))
			id := add(t, ts, rows...)
			c, err := ts.ClaimDue(context.Background(), tt.limit, tt.grace, lease, 5, nil)
			claimed, buried := c.Rows, c.Dead
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, w := range tt.want {
				want = append(want, id[w])
			}
			if got := ids(claimed); !sameSet(got, want) || len(buried) != 0 {
				t.Errorf("claimed %v, buried %v; want %v", got, buried, want)
			}
		})
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// NextDue is how long the sweeper may sleep: false with nothing pending,
// a fresh row counts from grace, and an overdue retry is negative.
func TestNextDue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := setup(t)
	const grace = 30 * time.Second
	steps := []struct {
		name string
		add  seed // added before NextDue is asked
		ok   bool
		want time.Duration
	}{
		{"delivered only", seed{status: StatusDelivered, next: -time.Hour}, false, 0},
		{"and dead", seed{status: StatusDead, next: -time.Hour}, false, 0},
		{"a fresh row waits for grace", seed{}, true, grace},
		{"a retry due sooner", seed{attempts: 1, next: 10 * time.Second}, true, 10 * time.Second},
		{"an overdue retry", seed{attempts: 2, next: -time.Minute}, true, -time.Minute},
	}
	if _, ok, err := st.NextDue(ctx, grace); ok || err != nil {
		t.Fatalf("NextDue of an empty table: ok %v, %v; want false", ok, err)
	}
	for _, s := range steps {
		add(t, st, s.add)
		d, ok, err := st.NextDue(ctx, grace)
		if err != nil || ok != s.ok || (ok && !near(d, s.want)) {
			t.Errorf("%s: NextDue = %s, %v, %v; want %s, %v", s.name, d, ok, err, s.want, s.ok)
		}
	}
}
