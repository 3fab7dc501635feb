package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/config"
	"github.com/outbox-relay/outbox-relay/internal/monitor"
	"github.com/outbox-relay/outbox-relay/relay"
)

// relayView is what a running relay says of itself on /readyz, for the
// figures the database cannot give: the rows whose writes it refuses and
// the runner's state.
type relayView struct {
	Address     string             `json:"address"`
	Reachable   bool               `json:"reachable"`
	WriteErrors []relay.WriteError `json:"write_errors"`
	Runner      *relay.RunnerState `json:"runner,omitempty"`
}

// probeRelay asks the relay listening on RELAY_LISTEN_ADDR, on this host
// (status usually runs in the relay's own container), for its /readyz.
// A relay that is not there is not a problem: status may run elsewhere.
func probeRelay(ctx context.Context, cfg config.Config) *relayView {
	if cfg.ListenAddr == "off" {
		return nil
	}
	host, port, _ := net.SplitHostPort(cfg.ListenAddr) // validated
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	v := &relayView{Address: net.JoinHostPort(host, port)}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+v.Address+"/readyz", nil)
	if err != nil {
		return v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return v
	}
	defer resp.Body.Close()
	var body monitor.Readiness
	if json.NewDecoder(resp.Body).Decode(&body) != nil {
		return v
	}
	v.Reachable, v.WriteErrors, v.Runner = true, body.WriteErrors, body.Runner
	return v
}
