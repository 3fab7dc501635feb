package handover

import (
	"testing"
	"time"
)

// A row is fresh only when never tried, due, and far enough from its
// lease time: everything else is claimed like any other row.
func TestFresh(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name     string
		grace    time.Duration
		inserted int
		due      time.Time
		want     bool
	}{
		{"never tried, due now", Grace, 0, now, true},
		{"inserted already tried: sweepers may take it at once", Grace, 2, now, false},
		{"not due yet", Grace, 0, now.Add(time.Millisecond), false},
		{"too close to its lease time", Grace, 0, now.Add(-Grace/2 + Budget/2), false},
		{"just far enough", Grace, 0, now.Add(-Grace/2 + Budget), true},
		{"no grace: nothing is fresh", 0, 0, now, false},
	} {
		leaseAt, ok := Fresh(c.grace, c.inserted, c.due, now)
		if ok != c.want {
			t.Errorf("%s: fresh %v, want %v", c.name, ok, c.want)
		}
		if ok && !leaseAt.Equal(c.due.Add(c.grace/2)) {
			t.Errorf("%s: lease at %s, want due plus half the grace", c.name, leaseAt)
		}
	}
}
