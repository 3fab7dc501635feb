// Command withpg runs a command against a throwaway PostgreSQL: it starts a
// cluster with pgtest (wal_level=logical, on a free port), runs the command
// with the server's URL in OUTBOX_TEST_DATABASE_URL, stops and removes the
// cluster, and exits with the command's exit code. With
// RELAY_TEST_DATABASE_URL set it passes that server on instead and starts
// none. make test-django runs the Django app's tests under it:
//
//	go run ./internal/pgtest/withpg -- ./manage.py test
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// EnvURL names the variable the command finds the server's URL in.
const EnvURL = "OUTBOX_TEST_DATABASE_URL"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: withpg [--] command [argument...]")
		return 2
	}
	url := os.Getenv(pgtest.EnvDatabaseURL)
	if url == "" {
		c, err := pgtest.Start()
		if err != nil {
			fmt.Fprintln(stderr, "withpg:", err)
			return 1
		}
		defer func() {
			if err := c.Stop(); err != nil {
				fmt.Fprintln(stderr, "withpg:", err)
			}
		}()
		url = c.URL("postgres")
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), EnvURL+"="+url)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	err := runForwarding(cmd)
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		if exit.ExitCode() < 0 {
			return 1 // ended by a signal
		}
		return exit.ExitCode()
	case err != nil:
		fmt.Fprintln(stderr, "withpg:", err)
		return 1
	}
	return 0
}

// runForwarding runs cmd until it ends, whatever signal withpg gets, so
// that the cluster is stopped after it. A Ctrl-C reaches the command
// already (the same process group); a SIGTERM is passed on to it.
func runForwarding(cmd *exec.Cmd) error {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case err := <-done:
			return err
		case s := <-sigs:
			if s == syscall.SIGTERM {
				_ = cmd.Process.Signal(s)
			}
		}
	}
}
