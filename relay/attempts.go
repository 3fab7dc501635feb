package relay

import (
	"net/http"
	"time"
)

// This file holds the rule of what an attempt is: which answers count
// towards dead (whose), and which are the runner's rather than the row's
// (runnerWide), with the breaker (breaker.go) that applies them.

// blame is whose failure an answer is, which decides whether the attempt
// counts towards dead.
type blame int

const (
	// blameRow: the attempt counts.
	blameRow blame = iota
	// blameRunner: the runner as a whole is down; the attempt is given
	// back and the row is due again at once (the breaker holds claims).
	blameRunner
	// blameThrottle: the runner asked for less (429); the attempt is given
	// back and the row retried after its backoff or Retry-After.
	blameThrottle
)

// whose decides whether an attempt counts towards dead, so that a row's
// attempts are the requests the runner answered for it, less those sent
// during an outage. b.mu is held, and the answer already observed:
//   - a 2xx counts: the row is done;
//   - a probe's failure never counts, whatever the answer: a probe is the
//     only request sent while the breaker is open or probing (rows
//     claimed before the opening are given back unsent);
//   - a request sent while the breaker was closed, and answered, counts,
//     whatever the answer (a 503 too), whatever other rows' answers are,
//     and also when the breaker opened while it was in flight: a row in
//     flight when an outage begins counts that one attempt. Only a 429 is
//     given back: the runner asked for less, it did not fail the row;
//   - a request that got no answer (refused, reset, timeout) counts only
//     as the first runner-wide failure of a streak, since it may be the
//     row's own: a runner that stops answering costs one counted attempt,
//     to one row, however long it stays down.
//
// So an outage costs a row at most one counted attempt.
func (b *breaker) whose(a answer, probe uint64) blame {
	switch {
	case delivered(a):
		return blameRow
	case probe != 0, a.err != nil && b.streak >= 2:
		return blameRunner
	case a.code == http.StatusTooManyRequests:
		return blameThrottle
	}
	return blameRow
}

// streakGap is how long after a runner-wide failure a request may be sent
// and still continue its streak: a runner left untried for longer is
// tried afresh, so failures spread over hours do not open the breaker as
// if in a row. It is twice the backoff before a row's
// (failuresToOpen-1)th retry, the longest wait between the tries of a
// lone row whose failures open the breaker, and at least the longest wait
// between probes.
func streakGap(backoff Backoff, probeMax time.Duration) time.Duration {
	if backoff.Base <= 0 || backoff.Max <= 0 {
		return probeMax
	}
	backoff.Jitter = 0
	return max(probeMax, 2*backoff.Delay(failuresToOpen-1))
}

// runnerWide reports whether an answer is a failure of the runner as a
// whole rather than of the row: no answer at all (refused, reset, TLS,
// timeout) or a gateway's 502, 503 or 504.
func runnerWide(a answer) bool {
	if a.err != nil {
		return true
	}
	switch a.code {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

func delivered(a answer) bool { return a.err == nil && a.code >= 200 && a.code < 300 }
