package main

import (
	"compress/gzip"
	"context"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

// otlpReceiver is an OTLP/HTTP trace receiver: it decodes every export
// request and keeps the spans with their service's name.
type otlpReceiver struct {
	*httptest.Server
	mu    sync.Mutex
	spans []receivedSpan
}

type receivedSpan struct {
	service string
	span    *tracepb.Span
	attrs   map[string]string
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	rc := &otlpReceiver{}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// No keep-alive: the exporter's connection must not outlive the
		// test (goleak).
		w.Header().Set("Connection", "close")
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = zr
		}
		raw, err := io.ReadAll(body)
		var req coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(raw, &req)
		}
		if err != nil || r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" {
			t.Errorf("export %s %s: %v", r.URL.Path, r.Header.Get("Content-Type"), err)
			http.Error(w, "bad export", http.StatusBadRequest)
			return
		}
		rc.add(&req)
		w.Header().Set("Content-Type", "application/x-protobuf")
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		_, _ = w.Write(out)
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *otlpReceiver) add(req *coltracepb.ExportTraceServiceRequest) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		service := attrs(rs.GetResource().GetAttributes())["service.name"]
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				rc.spans = append(rc.spans, receivedSpan{service: service, span: s, attrs: attrs(s.GetAttributes())})
			}
		}
	}
}

func (rc *otlpReceiver) received() []receivedSpan {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]receivedSpan(nil), rc.spans...)
}

func attrs(kvs []*commonpb.KeyValue) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		v := kv.GetValue()
		switch v.GetValue().(type) {
		case *commonpb.AnyValue_IntValue:
			m[kv.GetKey()] = strconv.FormatInt(v.GetIntValue(), 10)
		default:
			m[kv.GetKey()] = v.GetStringValue()
		}
	}
	return m
}

// traceRunner answers 503 to the first attempt of an event of type flaky
// and 204 to the rest, and keeps the traceparent of every request.
type traceRunner struct {
	*relaytest.Runner
	mu          sync.Mutex
	traceparent map[string][]string // by Idempotency-Key, one per attempt
}

func newTraceRunner(t *testing.T) *traceRunner {
	rn := &traceRunner{Runner: relaytest.NewRunner(t), traceparent: map[string][]string{}}
	rn.SetAnswer(relaytest.AnswerBy(func(r *http.Request, ev relaytest.Event) int {
		key := r.Header.Get("Idempotency-Key")
		rn.mu.Lock()
		rn.traceparent[key] = append(rn.traceparent[key], r.Header.Get("traceparent"))
		rn.mu.Unlock()
		if ev.Try == 1 && ev.Type == "flaky" {
			return http.StatusServiceUnavailable
		}
		return http.StatusNoContent
	}))
	return rn
}

func (rn *traceRunner) got(key string) []string {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	return append([]string(nil), rn.traceparent[key]...)
}

// With the traceparent role mapped and OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
// set, `run` exports one span per attempt over OTLP/HTTP: the row's trace
// is the span's, the event and the outcome are attributes, and the runner
// gets the span as its parent. An invalid traceparent is dropped and
// counted, and its event delivered all the same. Stopping the relay
// flushes the spans still buffered.
func TestSpansExportedOverOTLP(t *testing.T) {
	t.Parallel()
	url, conn := migrated(t)
	ctx := context.Background()
	exec(t, conn, `ALTER TABLE portal_event_outbox ADD COLUMN traceparent text, ADD COLUMN tracestate text`)
	receiver := newOTLPReceiver(t)
	rn := newTraceRunner(t)
	relay := startRelay(t, []string{"RELAY_DATABASE_URL=" + url, "RELAY_RUNNER_URL=" + rn.URL(),
		"RELAY_COLUMNS=traceparent=traceparent,tracestate=tracestate", "RELAY_CDC=off", "RELAY_SWEEP_INTERVAL=20ms",
		"RELAY_BACKOFF_BASE=10ms", "RELAY_BACKOFF_MAX=50ms",
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=" + receiver.URL + "/v1/traces", "OTEL_SERVICE_NAME=relay-under-test"})

	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	events := map[string]string{} // event id -> type
	for _, e := range []struct{ typ, tp string }{
		{"flaky", "00-" + traceID + "-" + parentID + "-01"},
		{"invalid", "00-" + strings.ToUpper(traceID) + "-" + parentID + "-01"},
	} {
		var id string
		if err := conn.QueryRow(ctx, `INSERT INTO portal_event_outbox (event_type, traceparent, tracestate)
			VALUES ($1, $2, 'congo=t61rcWkgMzE') RETURNING event_id::text`, e.typ, e.tp).Scan(&id); err != nil {
			t.Fatal(err)
		}
		events[id] = e.typ
	}
	pgtest.WaitFor(t, 30*time.Second, "both events delivered", func() bool {
		var n int
		err := conn.QueryRow(ctx, `SELECT count(*) FROM portal_event_outbox WHERE status = 'delivered'`).Scan(&n)
		return err == nil && n == 2
	})
	if n := relay.counter(t, `outbox_relay_trace_context_invalid_total{header="traceparent"}`); n != 1 {
		t.Errorf("%v invalid traceparents counted, want 1", n)
	}
	if code := relay.stop(); code != 0 {
		t.Fatalf("relay exit %d", code)
	}

	spans := receiver.received()
	if len(spans) != 3 {
		t.Fatalf("%d spans exported, want 3 (two attempts of one event, one of the other)", len(spans))
	}
	outcomes := map[string][]string{}
	for _, s := range spans {
		event := s.attrs["outbox.event_id"]
		outcomes[event] = append(outcomes[event], s.attrs["outbox.attempt"]+":"+s.attrs["outbox.outcome"]+":"+s.attrs["http.response.status_code"])
		spanTP := "00-" + hex.EncodeToString(s.span.GetTraceId()) + "-" + hex.EncodeToString(s.span.GetSpanId()) + "-01"
		attempt, _ := strconv.Atoi(s.attrs["outbox.attempt"])
		if sent := rn.got(event); attempt < 1 || attempt > len(sent) || sent[attempt-1] != spanTP {
			t.Errorf("the runner got traceparents %q for %s, want the span's %s at attempt %d", sent, event, spanTP, attempt)
		}
		if s.service != "relay-under-test" || s.attrs["outbox.event_type"] != events[event] {
			t.Errorf("span of %s: service %q, attributes %v", event, s.service, s.attrs)
		}
		gotTrace, gotParent := hex.EncodeToString(s.span.GetTraceId()), hex.EncodeToString(s.span.GetParentSpanId())
		if events[event] == "flaky" && (gotTrace != traceID || gotParent != parentID || s.span.GetTraceState() != "congo=t61rcWkgMzE") {
			t.Errorf("span of the flaky event: trace %s parent %s state %q, want the row's %s %s",
				gotTrace, gotParent, s.span.GetTraceState(), traceID, parentID)
		}
		if events[event] == "invalid" && (gotTrace == strings.ToLower(traceID) || gotParent != "") {
			t.Errorf("span of the invalid row: trace %s parent %s, want a trace of its own", gotTrace, gotParent)
		}
	}
	for event, typ := range events {
		want := map[string]string{"flaky": "1:retry:503 2:delivered:204", "invalid": "1:delivered:204"}[typ]
		got := outcomes[event]
		slices.Sort(got)
		if strings.Join(got, " ") != want {
			t.Errorf("spans of the %s event: %v, want %s", typ, got, want)
		}
	}
}

// A traceparent stored in a char(n) column longer than the value reaches
// the runner exactly as stored, without the padding, whether the stream
// or the sweep sends the row.
func TestCharTraceparentArrivesUnpadded(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	for _, path := range []string{"stream", "sweep"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			url, conn := migrated(t)
			ctx := context.Background()
			exec(t, conn, `ALTER TABLE portal_event_outbox ADD COLUMN traceparent char(64)`)
			rn := newTraceRunner(t)
			env := []string{"RELAY_DATABASE_URL=" + url, "RELAY_RUNNER_URL=" + rn.URL(),
				"RELAY_COLUMNS=traceparent=traceparent", "RELAY_SLOT_NAME=char_traceparent"}
			if path == "stream" {
				env = append(env, "RELAY_CDC=on", "RELAY_SWEEP_INTERVAL=1h")
			} else {
				env = append(env, "RELAY_CDC=off", "RELAY_SWEEP_INTERVAL=20ms")
			}
			relay := startRelay(t, env)
			if path == "stream" {
				pgtest.WaitFor(t, 30*time.Second, "the stream", func() bool {
					return strings.Contains(relay.logs.String(), "streaming inserts from the slot")
				})
			}
			var id string
			if err := conn.QueryRow(ctx, `INSERT INTO portal_event_outbox (event_type, traceparent)
				VALUES ('traced', $1) RETURNING event_id::text`, tp).Scan(&id); err != nil {
				t.Fatal(err)
			}
			pgtest.WaitFor(t, 30*time.Second, "the event delivered", func() bool {
				var n int
				err := conn.QueryRow(ctx, `SELECT count(*) FROM portal_event_outbox WHERE status = 'delivered'`).Scan(&n)
				return err == nil && n == 1
			})
			if got := rn.got(id); len(got) != 1 || got[0] != tp {
				t.Errorf("the runner got traceparents %q, want [%q]", got, tp)
			}
			if n := relay.counter(t, `outbox_relay_deliveries_total{outcome="delivered",path="`+path+`"}`); n != 1 {
				t.Errorf("%v deliveries by the %s, want 1", n, path)
			}
			if code := relay.stop(); code != 0 {
				t.Errorf("relay exit %d", code)
			}
		})
	}
}
