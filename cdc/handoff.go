package cdc

import (
	"context"
	"slices"
	"time"
)

// retryIDs are ids the Deliverer did not find, to be claimed again at at.
type retryIDs struct {
	ids     []int64
	attempt int // retries made so far
	at      time.Time
}

// handOff calls the Deliverer with each batch the reader sends, so that a
// slow claim never stops the stream from being read. Ids the claim did
// not find are tried again after missingRetries, without holding up the
// batches behind them. It returns when ctx is done; batches still queued
// are left to the sweeper, like everything else the stream drops.
func (s *Stream) handOff(ctx context.Context, batches <-chan []int64) {
	var retries []retryIDs // by at
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	failing := false
	for {
		var due <-chan time.Time
		if len(retries) > 0 {
			timer.Reset(time.Until(retries[0].at))
			due = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case ids := <-batches:
			retries = s.deliver(ctx, ids, 0, retries, &failing)
		case now := <-due:
			for len(retries) > 0 && !retries[0].at.After(now) {
				r := retries[0]
				retries = retries[1:]
				retries = s.deliver(ctx, r.ids, r.attempt, retries, &failing)
			}
		}
	}
}

// deliver makes one claim and schedules a retry of the ids it missed.
func (s *Stream) deliver(ctx context.Context, ids []int64, attempt int, retries []retryIDs, failing *bool) []retryIDs {
	missing, err := s.d.DeliverIDs(ctx, ids)
	switch {
	case err != nil && ctx.Err() != nil:
		return retries
	case err != nil:
		if !*failing {
			*failing = true
			s.log.Warn("replication: hand-off to the deliverer failed; the sweeper delivers those rows",
				"ids", len(ids), "error", s.redact(err))
		}
		return retries
	case *failing:
		*failing = false
		s.log.Info("replication: hand-off to the deliverer works again")
	}
	if len(missing) == 0 || attempt >= len(missingRetries) {
		return retries
	}
	r := retryIDs{ids: missing, attempt: attempt + 1, at: time.Now().Add(missingRetries[attempt])}
	i, _ := slices.BinarySearchFunc(retries, r.at, func(e retryIDs, t time.Time) int { return e.at.Compare(t) })
	return slices.Insert(retries, i, r)
}
