// Package handover owns the one rule that gives every row a single sender
// while the replication stream sends rows without claiming them.
//
// The stream sends a row it has just seen committed straight from its WAL
// tuple: no claim before the POST, one conditional outcome write after it.
// That is safe only if no other path of any replica takes the row
// meanwhile. The rule, in both directions:
//
//   - A row is Fresh when it was inserted never tried (attempts 0), is
//     pending and due, and is still at least Budget away from its lease
//     time (next_attempt_at plus half the grace). Only the stream session
//     that first receives the row's commit may send a fresh row, and only
//     as it was committed (cdc: a row its own transaction updated or
//     deleted is claimed instead).
//   - Every other path of every replica (sweep, probe, claim of a key's
//     successor) leaves a never-tried row alone until next_attempt_at plus
//     Grace, measured on the server's clock: SQL below. It does so whatever
//     the replica's RELAY_CDC, because another replica may be streaming.
//     Only a server that cannot decode (wal_level below logical) has no
//     stream anywhere, and there the grace is zero.
//   - A fresh send whose outcome is not written by its lease time claims
//     the row after all (conditional on the attempts it was inserted
//     with), which keeps every sweeper off it as any claim does; its
//     outcome is written only if the row still has those attempts.
//
// Outside the crash window (a relay that dies between a POST and its
// outcome write, as for any send), two senders overlap only when a fresh
// send's lease or outcome write takes more than half the grace to reach
// the database (a failover, an outage), or when the relay's clock jumps
// against the server's during a stream session.
package handover

import (
	"strings"
	"time"
)

// Grace is how long every sweeper leaves a never-tried row to the stream:
// far above the stream's milliseconds, short enough for the rows the stream
// leaves to the sweeper (a restart, a failover) to wait little.
const Grace = 5 * time.Second

// Budget is the least time a fresh send must have before its lease time;
// a row closer than that is claimed by id like any other.
const Budget = 50 * time.Millisecond

// Fresh reports whether a row seen inserted with inserted attempts and due
// at due (both on this host's clock) may be sent without a claim now under
// grace, and when its send must claim it if it is still running. A zero
// grace sends nothing fresh.
func Fresh(grace time.Duration, inserted int, due, now time.Time) (leaseAt time.Time, ok bool) {
	leaseAt = due.Add(grace / 2)
	if grace <= 0 || inserted != 0 || due.After(now) || leaseAt.Sub(now) < Budget {
		return time.Time{}, false
	}
	return leaseAt, true
}

// MayTake is the SQL condition under which a sweeper may take a pending,
// due row: it was tried before, or it is older than the grace, given in
// seconds by graceParam, on a server that can decode. attempts and
// nextAttemptAt are the columns as the statement names them.
func MayTake(attempts, nextAttemptAt, graceParam string) string {
	return strings.NewReplacer("{a}", attempts, "{n}", nextAttemptAt, "{g}", graceParam).Replace(
		`({a} > 0 OR {n} <= now() - CASE WHEN current_setting('wal_level') = 'logical' THEN {g}::float8 ELSE 0 END * interval '1 second')`)
}

// GraceSQL is the grace in seconds as the server applies it, for the
// sweeper's wake-up time: zero on a server that cannot decode.
func GraceSQL(graceParam string) string {
	return `CASE WHEN current_setting('wal_level') = 'logical' THEN ` + graceParam + `::float8 ELSE 0 END`
}
