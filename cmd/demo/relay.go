package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

// relayEnv is the demo's environment with our RELAY_ settings in place of
// any the caller has set.
func relayEnv(settings ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "RELAY_") {
			env = append(env, kv)
		}
	}
	return append(env, settings...)
}

// migrate runs `outbox-relay migrate` and shows what it printed.
func migrate(ctx context.Context, bin string, env []string, out *console) error {
	cmd := exec.CommandContext(ctx, bin, "migrate")
	cmd.Env = env
	b, err := cmd.CombinedOutput()
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		out.printf("migrate | %s", line)
	}
	if err != nil {
		return fmt.Errorf("outbox-relay migrate: %w", err)
	}
	return nil
}

// startRelay runs the relay as a child process, its log lines copied to
// the demo's output.
func startRelay(bin string, env []string, out *console) (*relaytest.Process, error) {
	return relaytest.Start(relaytest.Command{
		Binary: bin,
		Args:   []string{"run"},
		Env:    env,
		Echo:   func(line string) { out.printf("relay | %s", line) },
	})
}
