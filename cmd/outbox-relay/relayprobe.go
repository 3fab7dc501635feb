package main

import (
	"context"
	"encoding/json"
	"fmt"
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

// runnerProblems says so when the relay finds its runner down.
func runnerProblems(v *relayView) []string {
	if v == nil || v.Runner == nil || v.Runner.State == relay.RunnerClosed {
		return nil
	}
	return []string{fmt.Sprintf("the runner is down since %s (breaker %s, %d probes): %s; claiming is paused and attempts do not count",
		v.Runner.Since.Format(time.RFC3339), v.Runner.State, v.Runner.Probes, v.Runner.LastError)}
}

// writeErrorProblems says, for each row whose write the relay sees refused,
// which row, which statement and why.
func writeErrorProblems(v *relayView) []string {
	if v == nil {
		return nil
	}
	var p []string
	for _, e := range v.WriteErrors {
		p = append(p, fmt.Sprintf("row %s: the database refuses its %s (SQLSTATE %s, %d tries since %s): %s",
			e.ID, e.Statement, e.SQLState, e.Tries, e.Since.Format(time.RFC3339), e.Message))
	}
	return p
}
