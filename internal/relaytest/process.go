package relaytest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"syscall"
	"time"
)

// Command says how to start a relay process.
type Command struct {
	Binary string
	Args   []string // e.g. "run"; none runs the relay too
	Env    []string // the whole environment: nothing is inherited
	// LogLimit keeps only the last LogLimit bytes of output; 0 keeps all.
	LogLimit int
	// Echo, when set, also receives each line of output as it comes.
	Echo func(line string)
}

// Process is a running relay. Its stdout and stderr go to one Buffer.
type Process struct {
	cmd  *exec.Cmd
	logs *Buffer
	done chan struct{}
	err  error
}

// Start starts the process; a goroutine waits for its exit and closes Done.
// The caller stops it with Stop or Kill.
func Start(c Command) (*Process, error) {
	p := &Process{cmd: exec.Command(c.Binary, c.Args...), logs: &Buffer{Limit: c.LogLimit}, done: make(chan struct{})}
	p.cmd.Env = c.Env
	var out io.Writer = p.logs
	var echo *lineWriter
	if c.Echo != nil {
		echo = &lineWriter{fn: c.Echo}
		out = io.MultiWriter(p.logs, echo)
	}
	p.cmd.Stdout, p.cmd.Stderr = out, out
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start relay: %w", err)
	}
	go func() {
		p.err = p.cmd.Wait() // returns after the last output is copied
		if echo != nil {
			echo.flush()
		}
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Logs is the output kept so far.
func (p *Process) Logs() string { return p.logs.String() }

// Done is closed once the process has exited and its output is read.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is what waiting for the process returned; read it after Done.
func (p *Process) Err() error { return p.err }

// Exited reports whether the process has stopped, and its exit code if so
// (-1: ended by a signal).
func (p *Process) Exited() (code int, ok bool) {
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode(), true
	default:
		return 0, false
	}
}

// killWait bounds the wait after SIGKILL, which ends the process at once;
// only a stuck copy of its output could take longer.
const killWait = 10 * time.Second

// Kill sends SIGKILL and waits for the exit. Safe to call again.
func (p *Process) Kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(killWait):
	}
}

// Stop sends SIGTERM, as a container runtime would, and waits for the exit;
// past timeout it kills. It returns the exit code, -1 when the process was
// killed, and is safe to call again.
func (p *Process) Stop(timeout time.Duration) int {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		p.Kill()
		return -1
	}
}

// WaitReady polls url (the relay's /healthz or /readyz) until it answers
// 200. It fails when the process exits first or limit passes.
func (p *Process) WaitReady(ctx context.Context, url string, limit time.Duration) error {
	// No keep-alive: an idle connection would outlive the wait.
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var last error
	ok, err := poll(ctx, 20*time.Millisecond, limit, func() (bool, error) {
		if code, exited := p.Exited(); exited {
			return false, fmt.Errorf("relay exited with code %d before it was ready", code)
		}
		resp, err := client.Get(url)
		if err != nil {
			last = err
			return false, nil
		}
		resp.Body.Close()
		last = fmt.Errorf("%s answered %s", url, resp.Status)
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("relay not ready after %s: %v", limit, last)
	}
	return nil
}

// FreeAddr is a loopback address with a port free a moment ago, for a
// server the harness must know the address of before it starts.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
