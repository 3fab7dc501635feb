package store

import "time"

// Result is the outcome of one attempt, to be recorded.
type Result struct {
	ID      string
	Attempt int    // the attempt the row was claimed with; guards the update
	Status  string // StatusPending (retry), StatusDelivered or StatusDead
	Next    time.Time
	Error   string
	Key     *string // the row's ordering key, when it has one
	Kind    Kind    // what happened to the row, which decides how the write counts the attempt
}

// Kind is what happened to the row of a Result before its outcome is
// written: claimed, sent fresh, buried by the claim, or retried with its
// attempt given back. The zero Kind is a claimed row's outcome.
type Kind uint8

const (
	// KindClaimed: the claim counted the attempt; the write keeps the count.
	KindClaimed Kind = iota
	// KindFresh: the row was sent from the stream without a claim. Its
	// attempt was not counted yet, so the write counts it, and it writes
	// only if the row still has the attempts it was inserted with (nobody
	// claimed it meanwhile).
	KindFresh
	// KindUncounted: a claimed row's retry whose attempt is given back:
	// the runner as a whole failed or asked for less, which says nothing
	// about the row, so it must not bring the row closer to dead. The claim
	// counted the attempt; only a recorded outcome un-counts it, so a row
	// that crashes the relay every time still reaches dead. On a final
	// outcome it counts as KindClaimed.
	KindUncounted
	// KindFreshUncounted: a fresh row's retry whose attempt is not
	// counted: written as KindFresh is, leaving the attempts as inserted.
	KindFreshUncounted
	// KindBuried: the claim itself marked the row dead (every attempt
	// used up); there is nothing left to write.
	KindBuried
)

// Fresh reports whether the write expects the attempts as inserted and
// counts the attempt: the row was sent without a claim.
func (k Kind) Fresh() bool { return k == KindFresh || k == KindFreshUncounted }

// Uncounted reports whether a retry gives its attempt back.
func (k Kind) Uncounted() bool { return k == KindUncounted || k == KindFreshUncounted }

// Claimed is k for a row that is claimed after all: a fresh row whose
// lease write claimed it while it was being sent.
func (k Kind) Claimed() Kind {
	switch k {
	case KindFresh:
		return KindClaimed
	case KindFreshUncounted:
		return KindUncounted
	}
	return k
}

// Unclaimed is k for a row sent without a claim.
func (k Kind) Unclaimed() Kind {
	switch k {
	case KindClaimed:
		return KindFresh
	case KindUncounted:
		return KindFreshUncounted
	}
	return k
}
