package relay

import (
	"context"
	"log/slog"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// completer is the stage that ends an attempt: it tells the breaker of
// the answer, decides the outcome (outcome.go), reports it to the
// Observer and the trace, and hands it to the recorder (recorder.go),
// which writes it, holds what the database refuses (refusals.go,
// held.go) and tells the successors (successors.go) of the keys done.
type completer struct {
	log         *slog.Logger
	obs         Observer
	brk         judge
	rec         *recorder
	maxAttempts int
	backoff     Backoff
}

// judge is the breaker as the completer tells it of an answer: it says
// whose failure the answer is.
type judge interface {
	observe(a answer, sentAt time.Time, probe uint64) blame
}

// complete decides the outcome of the exchange of job j and queues it
// for the recorder.
func (c *completer) complete(ctx context.Context, j *job, x exchange) {
	r := &j.row
	who := c.brk.observe(x.ans, x.start, j.probe)
	res, outcome := decide(r, x.ans, who, c.maxAttempts, c.backoff, time.Now())
	res.Key = r.Key
	x.end(outcome, res.Error)
	c.obs.ObserveAttempt(Attempt{Path: j.path, Outcome: outcome, Duration: x.took, Age: time.Since(r.CreatedAt)})
	if res.Status == store.StatusDead {
		c.log.Warn("event dead-lettered", "id", r.ID, "event_id", r.EventID, "type", r.Type, "attempts", r.Attempt, "reason", res.Error)
	} else if c.log.Enabled(ctx, slog.LevelDebug) {
		c.log.Debug("attempt", "id", r.ID, "path", j.path, "outcome", outcome, "took", x.took)
	}
	res.Kind = j.hold.kind(res.Kind)
	c.rec.addSent(res, j.hold)
}
