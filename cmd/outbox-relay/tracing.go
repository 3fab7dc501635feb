package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/outbox-relay/outbox-relay/internal/config"
)

// tracing is the span export of a running relay: an OpenTelemetry SDK
// tracer provider with a batching OTLP/HTTP exporter. Nil when the OTEL_*
// variables ask for none, and then nothing of it runs.
type tracing struct {
	provider *sdktrace.TracerProvider
	log      *slog.Logger
}

// startTracing builds the export that cfg.Tracing asks for, or returns nil.
func startTracing(ctx context.Context, cfg config.Tracing, log *slog.Logger) (*tracing, error) {
	if cfg.Endpoint == "" {
		return nil, nil
	}
	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(cfg.Endpoint))
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	// The SDK's own resource (OTEL_RESOURCE_ATTRIBUTES, telemetry.sdk.*)
	// with the relay's name and version over it.
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		attribute.String("service.name", cfg.ServiceName), attribute.String("service.version", version)))
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	// The SDK reports a failed export through the global handler, which
	// by default writes a line of its own format to stderr.
	otel.SetErrorHandler(&exportErrors{log: log})
	shown := cfg.Endpoint
	if u, err := url.Parse(shown); err == nil {
		shown = u.Redacted()
	}
	log.Info("exporting a span per attempt", "endpoint", shown, "service", cfg.ServiceName)
	return &tracing{provider: sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res)), log: log}, nil
}

// exportErrors logs the SDK's errors at most once a minute, with how many
// there were: a collector that is down fails every export, every few
// seconds.
type exportErrors struct {
	log  *slog.Logger
	mu   sync.Mutex
	last time.Time
	n    int
}

// Handle implements otel.ErrorHandler.
func (e *exportErrors) Handle(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	if time.Since(e.last) < time.Minute {
		return
	}
	e.log.Warn("tracing: spans not exported", "error", err, "errors", e.n)
	e.last, e.n = time.Now(), 0
}

// tracer is what the Deliverer makes spans with; nil makes none.
func (t *tracing) tracer() trace.Tracer {
	if t == nil {
		return nil
	}
	return t.provider.Tracer("github.com/outbox-relay/outbox-relay/relay")
}

// stop exports the spans still buffered, within grace: the last attempts
// before a shutdown are the ones an operator looks for.
func (t *tracing) stop(grace time.Duration) {
	if t == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := t.provider.Shutdown(ctx); err != nil {
		t.log.Warn("tracing: spans not exported at shutdown", "error", err)
	}
}
