package relay

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-retryablehttp"
	"go.opentelemetry.io/otel/trace"
)

// sender is the stage that turns a job into an answer: it builds the
// request (request.go), signs it, puts the trace context on it
// (tracecontext.go) and POSTs it with quick retries (http.go). What the
// answer means is the completer's to decide.
type sender struct {
	cfg    Config
	log    *slog.Logger
	obs    Observer
	client *retryablehttp.Client
	// quick says whether a connection error may be retried in process:
	// the breaker's view of whether it is a blip.
	quick blipper
	// warnedTrace is set once an invalid trace context has been logged.
	warnedTrace atomic.Bool
}

// blipper says whether a connection error now looks like a blip rather
// than a runner that is down.
type blipper interface {
	blip(now time.Time) bool
}

func newSender(cfg Config, log *slog.Logger, obs Observer, quick blipper) *sender {
	s := &sender{cfg: cfg, log: log, obs: obs, quick: quick}
	s.client = newClient(cfg, s.quickRetry)
	return s
}

// exchange is one POST as the sender made it: the answer, when the POST
// started and how long it took, and the attempt's span, nil without a
// tracer.
type exchange struct {
	ans   answer
	start time.Time
	took  time.Duration
	span  trace.Span
}

// send POSTs the job's row and returns the exchange; cut is true when the
// POST was cut short by the end of ctx (the shutdown grace): the span is
// ended as unsent, and there is no answer to decide on.
func (s *sender) send(ctx context.Context, j *job) (x exchange, cut bool) {
	r := &j.row
	if r.Traceparent != "" {
		s.checkTraceContext(r)
	}
	if s.cfg.Tracer != nil {
		ctx, x.span = s.startSpan(ctx, j)
	}
	x.start = time.Now()
	x.ans = s.post(ctx, r)
	x.took = time.Since(x.start)
	if x.ans.err != nil && ctx.Err() != nil {
		x.end(outcomeUnsent, "")
		return x, true
	}
	return x, false
}

// end ends the exchange's span, if any, with the attempt's outcome.
func (x exchange) end(outcome, reason string) {
	if x.span != nil {
		endSpan(x.span, x.start, x.ans, outcome, reason)
	}
}
