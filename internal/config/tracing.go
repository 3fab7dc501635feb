package config

import (
	"fmt"
	"strings"
)

// Tracing is the span export, set by the standard OpenTelemetry variables
// rather than RELAY_* ones: platforms and operators set those for every
// service they run. Only what decides whether and where spans go is read
// here; the exporter reads the rest (OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT,
// _CERTIFICATE, _COMPRESSION, OTEL_TRACES_SAMPLER, OTEL_BSP_*,
// OTEL_RESOURCE_ATTRIBUTES) from the process environment itself.
type Tracing struct {
	// Endpoint is the OTLP/HTTP URL spans are POSTed to; empty when no
	// span is to be exported.
	Endpoint    string
	ServiceName string
}

// tracingVars are the variables Read keeps for validateTracing.
var tracingVars = []string{
	"OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME",
	"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
	"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
}

// validateTracing fills Tracing. Spans are exported when an endpoint is
// set and neither OTEL_SDK_DISABLED=true nor OTEL_TRACES_EXPORTER=none
// turns them off; without an endpoint nothing is exported, rather than
// sent to a default localhost:4318 that is rarely there.
func (c *Config) validateTracing() error {
	v := c.otel
	c.Tracing = Tracing{ServiceName: "outbox-relay"}
	if s := v["OTEL_SERVICE_NAME"]; s != "" {
		c.Tracing.ServiceName = s
	}
	if strings.EqualFold(strings.TrimSpace(v["OTEL_SDK_DISABLED"]), "true") {
		return nil
	}
	switch e := strings.TrimSpace(v["OTEL_TRACES_EXPORTER"]); e {
	case "", "otlp":
	case "none":
		return nil
	default:
		return &Error{"OTEL_TRACES_EXPORTER", fmt.Sprintf("must be otlp or none, not %q (the relay exports OTLP over HTTP)", e)}
	}
	for _, name := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if p := v[name]; p != "" {
			if p != "http/protobuf" {
				return &Error{name, fmt.Sprintf("must be http/protobuf, not %q (the relay exports OTLP over HTTP)", p)}
			}
			break
		}
	}
	// As the specification says: the signal's own endpoint is used as it
	// is, the general one gets the signal's path.
	name, endpoint := "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", v["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
	if endpoint == "" {
		name, endpoint = "OTEL_EXPORTER_OTLP_ENDPOINT", v["OTEL_EXPORTER_OTLP_ENDPOINT"]
		if endpoint != "" {
			endpoint = strings.TrimSuffix(endpoint, "/") + "/v1/traces"
		}
	}
	if endpoint == "" {
		return nil
	}
	if err := checkHTTPURL(endpoint); err != nil {
		return &Error{name, err.Error()}
	}
	c.Tracing.Endpoint = endpoint
	return nil
}
