package relay

import (
	"context"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// The W3C trace context headers, as reported to the Observer when a row's
// value is dropped.
const (
	HeaderTraceparent = "traceparent"
	HeaderTracestate  = "tracestate"
)

// checkTraceContext drops a traceparent that is not valid W3C, and its
// tracestate with it (the spec says to ignore a tracestate without a valid
// traceparent), or a tracestate that is not valid on its own. Each drop is
// counted: a bad value must not stop the event, and sent on it would break
// the runner's tracing or, with a line break in it, the request itself.
func (s *sender) checkTraceContext(r *store.Row) {
	switch {
	case !validTraceparent(r.Traceparent):
		s.droppedTraceContext(r, HeaderTraceparent)
		r.Traceparent, r.Tracestate = "", ""
	case r.Tracestate != "" && !validTracestate(r.Tracestate):
		s.droppedTraceContext(r, HeaderTracestate)
		r.Tracestate = ""
	}
}

// droppedTraceContext counts a dropped value and says so once a process:
// one bad row usually means the application writes them all that way.
func (s *sender) droppedTraceContext(r *store.Row, header string) {
	s.obs.ObserveTraceContextInvalid(header)
	if s.warnedTrace.CompareAndSwap(false, true) {
		s.log.Warn("dropped an invalid trace context; the event is sent without it (outbox_relay_trace_context_invalid_total counts them)",
			"header", header, "id", r.ID, "event_id", r.EventID)
	}
}

// validTraceparent reports whether s is a traceparent of W3C Trace Context
// (level 1, section 3.2): version-traceid-parentid-flags in lower-case hex,
// neither id all zeros, version ff invalid. A later version may append
// fields after a dash; version 00 may not.
func validTraceparent(s string) bool {
	if len(s) < 55 || s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return false
	}
	version, traceID, parentID, flags := s[:2], s[3:35], s[36:52], s[53:55]
	if !lowerHex(version) || version == "ff" || !lowerHex(traceID) || !lowerHex(parentID) || !lowerHex(flags) ||
		allZeros(traceID) || allZeros(parentID) {
		return false
	}
	if len(s) == 55 {
		return true
	}
	if version == "00" || s[55] != '-' {
		return false
	}
	for i := 56; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e { // must stay a valid header value
			return false
		}
	}
	return true
}

func lowerHex(s string) bool {
	for i := range len(s) {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func allZeros(s string) bool {
	for i := range len(s) {
		if s[i] != '0' {
			return false
		}
	}
	return true
}

// validTracestate reports whether s is a W3C tracestate list; the
// OpenTelemetry API's parser holds the spec's grammar and its 32-member
// bound.
func validTracestate(s string) bool {
	_, err := trace.ParseTraceState(s)
	return err == nil
}

// setTraceHeaders puts the row's trace context on the request.
func setTraceHeaders(h *headers, r *store.Row) {
	h.set(headerTraceparent, r.Traceparent)
	if r.Tracestate != "" {
		h.set(headerTracestate, r.Tracestate)
	}
}

// Span attributes of an attempt.
const (
	attrEventID   = attribute.Key("outbox.event_id")
	attrEventType = attribute.Key("outbox.event_type")
	attrAttempt   = attribute.Key("outbox.attempt")
	attrPath      = attribute.Key("outbox.path")
	attrOutcome   = attribute.Key("outbox.outcome")
	attrRowID     = attribute.Key("outbox.row_id")
	attrHTTPCode  = attribute.Key("http.response.status_code")
	attrMethod    = attribute.Key("http.request.method")
)

// outcomeUnsent labels the span of an attempt cut by the end of the
// shutdown grace: the row is given back, the attempt uncounted.
const outcomeUnsent = "unsent"

// startSpan begins the span of one attempt. It starts when the claim did,
// so it covers the claim, the wait in the queue and the POST; its parent
// is the row's traceparent when it has a valid one. The row's trace
// context becomes the span's, so the runner's job is a child of this
// attempt and in the same trace as the request that wrote the event.
func (s *sender) startSpan(ctx context.Context, j *job) (context.Context, trace.Span) {
	r := &j.row
	if r.Traceparent != "" {
		ctx = propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{
			HeaderTraceparent: r.Traceparent, HeaderTracestate: r.Tracestate})
	}
	ctx, span := s.cfg.Tracer.Start(ctx, "outbox deliver",
		trace.WithTimestamp(j.claimedAt), trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attrEventID.String(r.EventID), attrEventType.String(r.Type), attrRowID.String(r.ID),
			attrAttempt.Int(r.Attempt), attrPath.String(j.path), attrMethod.String(http.MethodPost)))
	sc := span.SpanContext()
	r.Traceparent = "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-" + sc.TraceFlags().String()
	r.Tracestate = sc.TraceState().String()
	return ctx, span
}

// endSpan ends the span of an attempt with its outcome: the POST as an
// event (its start marks the end of the claim and the wait), the runner's
// status code, and an error status unless delivered.
func endSpan(span trace.Span, posted time.Time, ans answer, outcome, reason string) {
	span.AddEvent("POST", trace.WithTimestamp(posted))
	span.SetAttributes(attrOutcome.String(outcome))
	if ans.code != 0 {
		span.SetAttributes(attrHTTPCode.Int(ans.code))
	}
	if outcome != OutcomeDelivered {
		if reason == "" && ans.err != nil {
			reason = ans.err.Error()
		}
		span.SetStatus(codes.Error, reason)
	}
	span.End()
}
