package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// buildRelay builds the real binary into dir, as a release would, with the
// version the relay sends in User-Agent.
func buildRelay(ctx context.Context, dir string) (string, error) {
	bin := dir + "/outbox-relay"
	cmd := exec.CommandContext(ctx, "go", "build",
		"-ldflags", "-X main.version=demo",
		"-o", bin, "github.com/outbox-relay/outbox-relay/cmd/outbox-relay")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build: %w", err)
	}
	return bin, nil
}

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

// relayProcess is the relay running as a child process, its log lines
// copied to the demo's output.
type relayProcess struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	once sync.Once
}

func startRelay(bin string, env []string, out *console) (*relayProcess, error) {
	cmd := exec.Command(bin, "run")
	cmd.Env = env
	logs, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start relay: %w", err)
	}
	p := &relayProcess{cmd: cmd, done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(logs)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			out.printf("relay | %s", sc.Text())
		}
		_ = cmd.Wait() // after the last read, as StderrPipe requires
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the relay has stopped, and its exit code if so.
func (p *relayProcess) exited() (code int, ok bool) {
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode(), true
	default:
		return 0, false
	}
}

// stop sends SIGTERM, as a container runtime would, and waits for the exit;
// after timeout it kills. It returns the exit code (-1: killed by a
// signal) and is safe to call again.
func (p *relayProcess) stop(timeout time.Duration) int {
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(timeout):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p.cmd.ProcessState.ExitCode()
}

// waitReady polls the relay's /readyz until it answers 200.
func (p *relayProcess) waitReady(ctx context.Context, addr string, timeout time.Duration) error {
	client := &http.Client{Timeout: 3 * time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if code, ok := p.exited(); ok {
			return fmt.Errorf("relay exited with code %d before it was ready", code)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("relay not ready after %s", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// freeAddr finds a free port on 127.0.0.1 for the relay's health server, so
// the demo knows where to ask whether it is ready.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
