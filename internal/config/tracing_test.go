package config

import (
	"strings"
	"testing"
)

// Spans are exported only with an endpoint, to the signal's own endpoint
// as it is or to the general one's /v1/traces, unless switched off; a
// value the relay cannot honour stops it naming the OTEL_ variable.
func TestTracing(t *testing.T) {
	for _, tt := range []struct {
		name string
		env  []string
		want Tracing
		err  string // the start of the error; empty when none
	}{
		{"unset", nil, Tracing{ServiceName: "outbox-relay"}, ""},
		{"service name alone", []string{"OTEL_SERVICE_NAME=portal-relay"}, Tracing{ServiceName: "portal-relay"}, ""},
		{"general endpoint", []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318/"},
			Tracing{Endpoint: "http://collector:4318/v1/traces", ServiceName: "outbox-relay"}, ""},
		{"traces endpoint as it is", []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://other:4318",
			"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=https://collector/otlp/spans", "OTEL_SERVICE_NAME=r"},
			Tracing{Endpoint: "https://collector/otlp/spans", ServiceName: "r"}, ""},
		{"protocol http/protobuf", []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
			"OTEL_TRACES_EXPORTER=otlp"}, Tracing{Endpoint: "http://c:4318/v1/traces", ServiceName: "outbox-relay"}, ""},
		{"sdk disabled", []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://c:4318", "OTEL_SDK_DISABLED=true"},
			Tracing{ServiceName: "outbox-relay"}, ""},
		{"exporter none", []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://c:4318", "OTEL_TRACES_EXPORTER=none"},
			Tracing{ServiceName: "outbox-relay"}, ""},
		{"grpc", []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL=grpc"},
			Tracing{}, "OTEL_EXPORTER_OTLP_PROTOCOL: must be http/protobuf"},
		{"traces protocol first", []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://c:4318", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/json",
			"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"}, Tracing{}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: must be http/protobuf"},
		{"zipkin", []string{"OTEL_TRACES_EXPORTER=zipkin"}, Tracing{}, "OTEL_TRACES_EXPORTER: must be otlp or none"},
		{"no host", []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http:///v1"}, Tracing{}, "OTEL_EXPORTER_OTLP_ENDPOINT: has no host"},
		{"password hidden", []string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=ftp://u:s3cret@c/x"}, Tracing{},
			"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: must be an absolute http or https URL"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(append(append([]string{}, valid...), tt.env...), NeedRunner)
			switch {
			case tt.err != "":
				if err == nil || !strings.HasPrefix(err.Error(), tt.err) || strings.Contains(err.Error(), "s3cret") {
					t.Errorf("error %v, want %q…", err, tt.err)
				}
			case err != nil:
				t.Errorf("error %v", err)
			case c.Tracing != tt.want:
				t.Errorf("Tracing = %+v, want %+v", c.Tracing, tt.want)
			}
		})
	}
}
