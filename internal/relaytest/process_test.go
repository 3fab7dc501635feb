package relaytest

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestProcessStopAndExit(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	var echoed Buffer
	// The trap is set before "started" is printed, so the SIGTERM the test sends on seeing it always meets the trap.
	p, err := Start(Command{Binary: sh, Args: []string{"-c", `trap 'echo bye; exit 3' TERM; echo started; while :; do sleep 0.05; done`},
		Echo: func(l string) { _, _ = echoed.Write([]byte(l + "\n")) }})
	if err != nil {
		t.Fatal(err)
	}
	ok, _ := poll(context.Background(), 10*time.Millisecond, 10*time.Second, func() (bool, error) {
		return strings.Contains(p.Logs(), "started"), nil
	})
	if !ok {
		t.Fatalf("no output: %q", p.Logs())
	}
	if code := p.Stop(10 * time.Second); code != 3 {
		t.Errorf("exit %d after SIGTERM, want 3", code)
	}
	if code, exited := p.Exited(); !exited || code != 3 {
		t.Errorf("Exited = %d, %v", code, exited)
	}
	if got := echoed.String(); got != "started\nbye\n" {
		t.Errorf("echoed %q", got)
	}
	p.Kill() // after the exit: a no-op
}

func TestWaitReadyFailsWhenTheProcessExits(t *testing.T) {
	p, err := Start(Command{Binary: os.Args[0], Args: []string{"-test.run=^$"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	addr, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	err = p.WaitReady(context.Background(), "http://"+addr+"/readyz", 30*time.Second)
	if err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("WaitReady = %v, want the exit", err)
	}
}
