package relaytest

import "testing"

// The order check finds a key's rows accepted out of order, and only
// those: other keys, rows without a key and dead rows do not count.
func TestOrderViolations(t *testing.T) {
	rows := []KeyedRow{{"a1", "a", false}, {"b1", "b", false}, {"a2", "a", true}, {"n1", "", false}, {"a3", "a", false}, {"b2", "b", false}}
	for _, tc := range []struct {
		name     string
		accepted []string
		want     int
	}{
		{"in order", []string{"a1", "b1", "n1", "a3", "b2"}, 0},
		{"keys interleaved, dead row late", []string{"b1", "a1", "b2", "a3", "a2", "n1"}, 0},
		{"a key reversed", []string{"a3", "a1", "b1", "b2"}, 1},
		{"two keys reversed", []string{"b2", "a3", "b1", "a1"}, 2},
	} {
		if got := OrderViolations(rows, tc.accepted); len(got) != tc.want {
			t.Errorf("%s: %d violations %v, want %d", tc.name, len(got), got, tc.want)
		}
	}
}
