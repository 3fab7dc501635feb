package relay_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/store"
	"github.com/outbox-relay/outbox-relay/relay"
)

// counts is an Observer that counts the dropped trace context headers.
type counts struct {
	mu      sync.Mutex
	invalid map[string]int
}

func (c *counts) ObserveAttempt(relay.Attempt) {}
func (c *counts) ObserveWriteError(string)     {}
func (c *counts) ObserveTraceContextInvalid(h string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.invalid[h]++
}

func (c *counts) of(h string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.invalid[h]
}

// tracedSetup is setup on an outbox table with traceparent and tracestate
// columns, mapped to their roles.
func tracedSetup(t *testing.T, answer func(http.ResponseWriter, *http.Request, []byte), tracer *sdktrace.TracerProvider) (*bundle, *counts) {
	t.Helper()
	pool := newPool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `ALTER TABLE portal_event_outbox ADD COLUMN traceparent text, ADD COLUMN tracestate text`); err != nil {
		t.Fatal(err)
	}
	cols, err := store.ParseColumns("traceparent=traceparent,tracestate=tracestate")
	if err != nil {
		t.Fatal(err)
	}
	schema, err := store.Inspect(ctx, pool, table, cols, store.DefaultStatuses())
	if err != nil {
		t.Fatal(err)
	}
	rn := newRunner(t, answer)
	cfg := relay.Config{RunnerURL: rn.URL(), HTTPTimeout: 5 * time.Second, Concurrency: 4, MaxAttempts: 5,
		Backoff: relay.Backoff{Base: 10 * time.Millisecond, Max: 10 * time.Millisecond}, ShutdownGrace: 5 * time.Second}
	if tracer != nil {
		cfg.Tracer = tracer.Tracer("test")
	}
	obs := &counts{invalid: map[string]int{}}
	st := store.New(pool, schema)
	d := relay.New(cfg, st, quiet, obs)
	startDeliverer(t, d)
	return &bundle{pool: pool, store: st, runner: rn, d: d}, obs
}

func insertTraced(t *testing.T, b *bundle, typ string, tp, ts *string) (id, eventID string) {
	t.Helper()
	err := b.pool.QueryRow(context.Background(), `INSERT INTO portal_event_outbox (event_type, traceparent, tracestate)
		VALUES ($1, $2, $3) RETURNING id::text, event_id::text`, typ, tp, ts).Scan(&id, &eventID)
	if err != nil {
		t.Fatal(err)
	}
	return id, eventID
}

const (
	rowTraceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
	rowParentID    = "00f067aa0ba902b7"
	rowTraceparent = "00-" + rowTraceID + "-" + rowParentID + "-01"
)

func ptr(s string) *string { return &s }

// A valid trace context in the row arrives as the traceparent and
// tracestate headers; an invalid one is dropped and counted, and the event
// is delivered all the same.
func TestTraceContextHeaders(t *testing.T) {
	t.Parallel()
	b, obs := tracedSetup(t, ok, nil)
	tests := []struct {
		name           string
		tp, ts         *string
		wantTP, wantTS string
	}{
		{"both", ptr(rowTraceparent), ptr("congo=t61rcWkgMzE"), rowTraceparent, "congo=t61rcWkgMzE"},
		{"traceparent only", ptr(rowTraceparent), nil, rowTraceparent, ""},
		{"none", nil, ptr("congo=t61rcWkgMzE"), "", ""},
		{"empty", ptr(""), nil, "", ""},
		{"invalid traceparent", ptr(strings.ToUpper(rowTraceparent)), ptr("congo=t61rcWkgMzE"), "", ""},
		{"zero trace id", ptr("00-00000000000000000000000000000000-" + rowParentID + "-01"), nil, "", ""},
		{"invalid tracestate", ptr(rowTraceparent), ptr("a=b\r\nX-Injected: 1"), rowTraceparent, ""},
	}
	byEvent := map[string]int{}
	var ids []string
	for i, tt := range tests {
		id, eventID := insertTraced(t, b, tt.name, tt.tp, tt.ts)
		byEvent[eventID] = i
		ids = append(ids, id)
	}
	b.deliver(t, ids...)
	for _, id := range ids {
		if s := settled(t, b, id, 1); s.Status != store.StatusDelivered {
			t.Errorf("row %s: %+v", id, s)
		}
	}
	reqs := b.runner.requests()
	if len(reqs) != len(tests) {
		t.Fatalf("runner got %d requests, want %d", len(reqs), len(tests))
	}
	for _, r := range reqs {
		tt := tests[byEvent[r.Header.Get("Idempotency-Key")]]
		if got := r.Header.Get("traceparent"); got != tt.wantTP {
			t.Errorf("%s: traceparent %q, want %q", tt.name, got, tt.wantTP)
		}
		if got := r.Header.Values("tracestate"); strings.Join(got, ",") != tt.wantTS {
			t.Errorf("%s: tracestate %q, want %q", tt.name, got, tt.wantTS)
		}
	}
	if n := obs.of(relay.HeaderTraceparent); n != 2 {
		t.Errorf("%d invalid traceparents counted, want 2", n)
	}
	if n := obs.of(relay.HeaderTracestate); n != 1 {
		t.Errorf("%d invalid tracestates counted, want 1", n)
	}
}

// With a Tracer, each attempt is a span: a child of the row's traceparent,
// with the event and the outcome as attributes; the runner gets the span
// as its parent, in the row's trace. A row without a trace context starts
// a trace of its own.
func TestSpanPerAttempt(t *testing.T) {
	t.Parallel()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	var mu sync.Mutex
	tries := map[string]int{}
	b, _ := tracedSetup(t, func(w http.ResponseWriter, r *http.Request, _ []byte) {
		mu.Lock()
		tries[r.Header.Get("Idempotency-Key")]++
		first := tries[r.Header.Get("Idempotency-Key")] == 1
		mu.Unlock()
		if first {
			// A 500 is the row's own failure: a 503 after another would
			// be blamed on the runner (see breaker) and give the attempt
			// back.
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}, tp)
	traced, tracedEvent := insertTraced(t, b, "traced", ptr(rowTraceparent), ptr("congo=t61rcWkgMzE"))
	plain, plainEvent := insertTraced(t, b, "plain", nil, nil)
	b.deliver(t, traced, plain)
	settled(t, b, traced, 1)
	settled(t, b, plain, 1)
	pgtest.WaitFor(t, 20*time.Second, "the retries", func() bool {
		if _, err := b.d.DeliverDue(context.Background(), 10, 0); err != nil {
			t.Fatal(err)
		}
		return state(t, b.pool, traced).Status == store.StatusDelivered && state(t, b.pool, plain).Status == store.StatusDelivered
	})

	spans := exp.GetSpans()
	if len(spans) != 4 {
		t.Fatalf("%d spans, want 4 (two attempts of two events)", len(spans))
	}
	sent := map[string]string{} // the traceparent the runner got, by span id
	for _, r := range b.runner.requests() {
		tp := r.Header.Get("traceparent")
		if len(tp) == 55 {
			sent[tp[36:52]] = tp
		}
	}
	attempts := map[string][]string{}
	for _, s := range spans {
		attrs := map[string]string{}
		for _, kv := range s.Attributes {
			attrs[string(kv.Key)] = kv.Value.String()
		}
		event := attrs["outbox.event_id"]
		attempts[event] = append(attempts[event], attrs["outbox.attempt"]+":"+attrs["outbox.outcome"]+":"+attrs["http.response.status_code"])
		sc := s.SpanContext
		if got := sent[sc.SpanID().String()]; got != "00-"+sc.TraceID().String()+"-"+sc.SpanID().String()+"-01" {
			t.Errorf("span %s of %s: the runner got traceparent %q", sc.SpanID(), event, got)
		}
		switch event {
		case tracedEvent:
			if sc.TraceID().String() != rowTraceID || s.Parent.SpanID().String() != rowParentID || !s.Parent.IsRemote() {
				t.Errorf("span of the traced row: trace %s parent %s, want %s %s", sc.TraceID(), s.Parent.SpanID(), rowTraceID, rowParentID)
			}
			if sc.TraceState().String() != "congo=t61rcWkgMzE" {
				t.Errorf("span of the traced row: tracestate %q", sc.TraceState())
			}
		case plainEvent:
			if s.Parent.IsValid() || sc.TraceID().String() == rowTraceID {
				t.Errorf("span of the plain row has parent %s in trace %s", s.Parent.SpanID(), sc.TraceID())
			}
		default:
			t.Errorf("span %q of no event: %v", s.Name, attrs)
		}
	}
	for _, e := range []string{tracedEvent, plainEvent} {
		if got := strings.Join(attempts[e], " "); got != "1:retry:500 2:delivered:204" {
			t.Errorf("spans of %s: %s, want 1:retry:500 2:delivered:204", e, got)
		}
	}
}
