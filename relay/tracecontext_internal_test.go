package relay

import "testing"

// The W3C Trace Context rules for traceparent: lower-case hex fields of
// fixed length, neither id all zeros, version ff invalid, version 00 of
// exactly 55 characters, a later version possibly longer after a dash.
func TestValidTraceparent(t *testing.T) {
	t.Parallel()
	const ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	for s, want := range map[string]bool{
		ok: true,
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00":     true, // not sampled
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":     true, // a later version
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz": true, // with a field of its own
		"":            false,
		"not a trace": false,
		ok[:54]:       false,
		ok + "-":      false, // version 00 has no more fields
		ok + " ":      false,
		" " + ok[:54]: false,
		"ff" + ok[2:]: false, // version ff is invalid
		"0g" + ok[2:]: false,
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01":      false, // upper case
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01":      false, // zero trace id
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01":      false, // zero parent id
		"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":      false,
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x":      false,
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x":     false,
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-a\nb": false, // would break the request
	} {
		if got := validTraceparent(s); got != want {
			t.Errorf("validTraceparent(%q) = %v, want %v", s, got, want)
		}
	}
	for s, want := range map[string]bool{
		"congo=t61rcWkgMzE":                   true,
		"rojo=00f067aa0ba902b7,congo=t61rcWk": true,
		"tenant@vendor=x":                     true,
		"UPPER=x":                             false,
		"no-equals":                           false,
		"a=b\r\nX-Injected: 1":                false,
	} {
		if got := validTracestate(s); got != want {
			t.Errorf("validTracestate(%q) = %v, want %v", s, got, want)
		}
	}
}
