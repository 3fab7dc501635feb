// Package relaytest runs the real outbox-relay binary for the harnesses
// that judge it from outside (bench, faults, cmd/demo): it builds the
// binary, serves a runner that records what it receives, starts, signals
// and waits for relay processes, and collects their output.
package relaytest

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
)

// mainPackage is the relay's command, named by import path so that Build
// works from any directory inside the module.
const mainPackage = "github.com/outbox-relay/outbox-relay/cmd/outbox-relay"

// versionSymbols are the variables -ldflags -X sets to the version.
var versionSymbols = []string{"main.version"}

// BuildOptions are the choices of a Build.
type BuildOptions struct {
	// Race builds with the race detector, so that a harness running under
	// -race also hunts data races in the binary (see Race).
	Race bool
	// Version is the version the binary reports and sends in User-Agent;
	// empty keeps the default.
	Version string
}

// Build compiles cmd/outbox-relay into dir and returns the binary's path.
// The error carries the compiler's output.
func Build(ctx context.Context, dir string, opts BuildOptions) (string, error) {
	bin := filepath.Join(dir, "outbox-relay")
	args := []string{"build", "-o", bin}
	if opts.Race {
		args = append(args, "-race")
	}
	if opts.Version != "" {
		ldflags := ""
		for _, sym := range versionSymbols {
			ldflags += fmt.Sprintf(" -X %s=%s", sym, opts.Version)
		}
		args = append(args, "-ldflags", ldflags[1:])
	}
	out, err := exec.CommandContext(ctx, "go", append(args, mainPackage)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build outbox-relay: %w\n%s", err, out)
	}
	return bin, nil
}
