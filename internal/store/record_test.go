package store

import (
	"context"
	"testing"
	"time"
)

// claimOne claims the row id and returns it as the claim does.
func claimOne(t *testing.T, st *Store, id string) Row {
	t.Helper()
	c, err := st.ClaimIDs(context.Background(), []string{id}, lease, 5)
	claimed := c.Rows
	if err != nil || len(claimed) != 1 {
		t.Fatalf("claim row %s = %v, %v", id, ids(claimed), err)
	}
	return claimed[0]
}

// Record writes each outcome of a batch in one statement: delivered clears
// the last error, a retry sets when and why, dead keeps the lease time.
func TestRecordWritesOutcomes(t *testing.T) {
	t.Parallel()
	st := setup(t)
	failed := "runner: 503"
	tests := []struct {
		name   string
		result Result // ID and Attempt filled in from the claim
		want   state
	}{
		{"delivered", Result{Status: StatusDelivered},
			state{Status: StatusDelivered, Attempts: 1, NextIn: lease, Delivered: true}},
		{"retry", Result{Status: StatusPending, Next: time.Now().Add(time.Hour), Error: failed},
			state{Status: StatusPending, Attempts: 1, NextIn: time.Hour, LastError: &failed}},
		{"dead", Result{Status: StatusDead, Error: failed},
			state{Status: StatusDead, Attempts: 1, NextIn: lease, LastError: &failed}},
		// The runner was down: the attempt is given back.
		{"retry not counted", Result{Status: StatusPending, Next: time.Now().Add(time.Hour), Error: failed, Uncount: true},
			state{Status: StatusPending, Attempts: 0, NextIn: time.Hour, LastError: &failed}},
		// Uncount means nothing on a final outcome.
		{"delivered uncount ignored", Result{Status: StatusDelivered, Uncount: true},
			state{Status: StatusDelivered, Attempts: 1, NextIn: lease, Delivered: true}},
	}
	results := make([]Result, len(tests))
	for i, tt := range tests {
		// An earlier failure's error, which delivery must clear.
		id := add(t, st, seed{lastError: "earlier failure"})[0]
		row := claimOne(t, st, id)
		results[i] = tt.result
		results[i].ID, results[i].Attempt = row.ID, row.Attempt
	}
	if _, _, err := st.Record(context.Background(), results); err != nil {
		t.Fatal(err)
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := get(t, st, results[i].ID)
			if !sameState(got, tt.want) {
				t.Errorf("row = %s, want %s", show(got), show(tt.want))
			}
		})
	}
}

// The attempts guard: an outcome for an attempt that is no longer the
// row's (its lease ran out and it was claimed again), or for a row that is
// no longer pending, changes nothing.
func TestRecordIgnoresLateWriters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := setup(t)
	id := add(t, st, seed{}, seed{})
	first := claimOne(t, st, id[0])
	expire(t, st, id[0])
	second := claimOne(t, st, id[0])
	if _, _, err := st.Record(ctx, []Result{{ID: id[0], Attempt: first.Attempt, Status: StatusDelivered}}); err != nil {
		t.Fatal(err)
	}
	if got := get(t, st, id[0]); got.Status != StatusPending || got.Attempts != 2 || got.Delivered || !near(got.NextIn, lease) {
		t.Errorf("after the first attempt's late outcome, row = %s; want pending, attempt 2, leased", show(got))
	}
	if _, _, err := st.Record(ctx, []Result{{ID: id[0], Attempt: second.Attempt, Status: StatusDelivered}}); err != nil {
		t.Fatal(err)
	}
	if got := get(t, st, id[0]); got.Status != StatusDelivered {
		t.Errorf("the current attempt's outcome was not written: row = %s", show(got))
	}

	row := claimOne(t, st, id[1])
	done := Result{ID: row.ID, Attempt: row.Attempt, Status: StatusDelivered}
	if _, _, err := st.Record(ctx, []Result{done}); err != nil {
		t.Fatal(err)
	}
	again := Result{ID: row.ID, Attempt: row.Attempt, Status: StatusDead, Error: "a second writer"}
	if _, _, err := st.Record(ctx, []Result{again}); err != nil {
		t.Fatal(err)
	}
	if got := get(t, st, id[1]); got.Status != StatusDelivered || got.LastError != nil {
		t.Errorf("a delivered row was overwritten: %s", show(got))
	}
}

// Release gives a lease back: the attempt is un-counted and the row is due
// at once, so the next claim takes it with the same attempt number. It is
// guarded like Record.
func TestReleaseGivesTheLeaseBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := setup(t)
	id := add(t, st, seed{attempts: 1, next: -time.Second}, seed{}, seed{})
	held := claimOne(t, st, id[0])
	if _, err := st.Release(ctx, []Row{held}); err != nil {
		t.Fatal(err)
	}
	if got := get(t, st, id[0]); got.Attempts != 1 || got.NextIn > 0 || got.Status != StatusPending {
		t.Errorf("released row = %s, want pending, attempts 1, due now", show(got))
	}
	c, err := st.ClaimDue(ctx, 10, time.Hour, lease, 5, nil)
	claimed, _ := c.Rows, c.Dead
	if err != nil || len(claimed) != 1 || claimed[0].ID != id[0] || claimed[0].Attempt != held.Attempt {
		t.Errorf("claim after release = %+v, %v; want row %s at attempt %d", claimed, err, id[0], held.Attempt)
	}

	// A release by a holder whose lease ran out and was claimed again.
	stale := claimOne(t, st, id[1])
	expire(t, st, id[1])
	claimOne(t, st, id[1])
	// A release of a row already delivered.
	done := claimOne(t, st, id[2])
	if _, _, err := st.Record(ctx, []Result{{ID: done.ID, Attempt: done.Attempt, Status: StatusDelivered}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Release(ctx, []Row{stale, done}); err != nil {
		t.Fatal(err)
	}
	if got := get(t, st, id[1]); got.Attempts != 2 || !near(got.NextIn, lease) {
		t.Errorf("a stale release changed the row: %s, want attempts 2 and leased", show(got))
	}
	if got := get(t, st, id[2]); got.Status != StatusDelivered || got.Attempts != 1 {
		t.Errorf("a release changed a delivered row: %s", show(got))
	}
}
