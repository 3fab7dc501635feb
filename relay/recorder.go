package relay

import (
	"context"
	"log/slog"
	"slices"

	"github.com/sethvargo/go-retry"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// recorder writes the outcomes the workers decide, batching whatever has
// queued up while the previous write ran, and tells the sweeper when a
// write scheduled a retry.
type recorder struct {
	store   *store.Store
	log     *slog.Logger
	results chan store.Result
	// rescheduled is signalled after a write that scheduled a retry; it
	// holds one signal, so a burst of retries wakes the sweeper once.
	rescheduled chan struct{}
}

func newRecorder(st *store.Store, log *slog.Logger, buffer int) *recorder {
	return &recorder{
		store:       st,
		log:         log,
		results:     make(chan store.Result, buffer),
		rescheduled: make(chan struct{}, 1),
	}
}

// add queues an outcome; it blocks while the recorder is behind, which
// holds the workers back rather than let outcomes pile up unwritten.
func (rec *recorder) add(r store.Result) { rec.results <- r }

// close says that no outcome will be added; run returns once it has
// written those already added.
func (rec *recorder) close() { close(rec.results) }

// run writes outcomes as they come, one UPDATE … FROM unnest per batch of
// up to recordBatch, until close. Writes are retried until ctx ends.
func (rec *recorder) run(ctx context.Context) {
	batch := make([]store.Result, 0, recordBatch)
	for r := range rec.results {
		batch = append(batch[:0], r)
	fill:
		for len(batch) < recordBatch {
			select {
			case r, ok := <-rec.results:
				if !ok {
					break fill
				}
				batch = append(batch, r)
			default:
				break fill
			}
		}
		rec.write(ctx, batch)
		if slices.ContainsFunc(batch, func(r store.Result) bool { return r.Status == store.StatusPending }) {
			select {
			case rec.rescheduled <- struct{}{}:
			default: // a wake-up is already pending
			}
		}
	}
}

// write retries a failed write while the database is away; if it never
// comes back before shutdown the rows' leases end and they are sent again,
// with the same event_id.
func (rec *recorder) write(ctx context.Context, batch []store.Result) {
	b := retry.WithCappedDuration(writeRetryMax, retry.NewExponential(writeRetryMin))
	failed := false
	err := retry.Do(ctx, b, func(ctx context.Context) error {
		wctx, cancel := context.WithTimeout(ctx, writeTimeout)
		defer cancel()
		if err := rec.store.Record(wctx, batch); err != nil {
			if !failed {
				rec.log.Error("cannot record delivery outcomes; retrying", "rows", len(batch), "error", err)
				failed = true
			}
			return retry.RetryableError(err)
		}
		return nil
	})
	switch {
	case err != nil:
		rec.log.Error("gave up recording delivery outcomes; the rows are retried when their lease ends", "rows", len(batch), "error", err)
	case failed:
		rec.log.Info("recording delivery outcomes again")
	}
}
