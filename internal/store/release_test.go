package store

import (
	"context"
	"testing"
	"time"
)

// Release gives a lease back: the attempt is un-counted and the row is due
// at once, so the next claim takes it with the same attempt number. It is
// guarded like Record.
func TestReleaseGivesTheLeaseBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := setup(t)
	id := add(t, st, seed{attempts: 1, next: -time.Second}, seed{}, seed{})
	held := claimOne(t, st, id[0])
	if err := st.Release(ctx, []Row{held}); err != nil {
		t.Fatal(err)
	}
	if got := get(t, st, id[0]); got.Attempts != 1 || got.NextIn > 0 || got.Status != StatusPending {
		t.Errorf("released row = %s, want pending, attempts 1, due now", show(got))
	}
	claimed, _, err := st.ClaimDue(ctx, 10, time.Hour, lease, 5)
	if err != nil || len(claimed) != 1 || claimed[0].ID != id[0] || claimed[0].Attempt != held.Attempt {
		t.Errorf("claim after release = %+v, %v; want row %d at attempt %d", claimed, err, id[0], held.Attempt)
	}

	// A release by a holder whose lease ran out and was claimed again.
	stale := claimOne(t, st, id[1])
	expire(t, st, id[1])
	claimOne(t, st, id[1])
	// A release of a row already delivered.
	done := claimOne(t, st, id[2])
	if err := st.Record(ctx, []Result{{ID: done.ID, Attempt: done.Attempt, Status: StatusDelivered}}); err != nil {
		t.Fatal(err)
	}
	if err := st.Release(ctx, []Row{stale, done}); err != nil {
		t.Fatal(err)
	}
	if got := get(t, st, id[1]); got.Attempts != 2 || !near(got.NextIn, lease) {
		t.Errorf("a stale release changed the row: %s, want attempts 2 and leased", show(got))
	}
	if got := get(t, st, id[2]); got.Status != StatusDelivered || got.Attempts != 1 {
		t.Errorf("a release changed a delivered row: %s", show(got))
	}
}
