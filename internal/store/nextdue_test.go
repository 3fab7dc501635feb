package store

import (
	"context"
	"testing"
	"time"
)

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
