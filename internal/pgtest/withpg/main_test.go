package main

import (
	"context"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// TestMain lets the test binary play the command withpg runs: with
// WITHPG_HELPER set it connects to the URL it was given and exits 7.
func TestMain(m *testing.M) {
	if os.Getenv("WITHPG_HELPER") != "" {
		os.Exit(helper())
	}
	os.Exit(m.Run())
}

func helper() int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, os.Getenv(EnvURL))
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		return 1
	}
	defer conn.Close(ctx)
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		return 1
	}
	return 7
}

func TestRunsTheCommandOnAThrowawayServer(t *testing.T) {
	t.Setenv(pgtest.EnvDatabaseURL, "")
	if _, err := pgtest.FindBinDir(); err != nil && os.Getenv("CI") == "" {
		t.Skip(err)
	}
	t.Setenv("WITHPG_HELPER", "1")
	var stderr strings.Builder
	if code := run([]string{"--", os.Args[0]}, io.Discard, &stderr); code != 7 {
		t.Fatalf("exit code %d, want the command's 7; stderr:\n%s", code, stderr.String())
	}
}

func TestPassesAGivenServerOn(t *testing.T) {
	t.Setenv(pgtest.EnvDatabaseURL, "postgres://given.example/db")
	code := run([]string{"sh", "-c", `test "$` + EnvURL + `" = postgres://given.example/db && exit 3`}, io.Discard, io.Discard)
	if code != 3 {
		t.Fatalf("exit code %d, want 3: the command did not get RELAY_TEST_DATABASE_URL", code)
	}
}

func TestUsage(t *testing.T) {
	var stderr strings.Builder
	if code := run([]string{"--"}, io.Discard, &stderr); code != 2 {
		t.Fatalf("exit code %d, want 2", code)
	}
	if got := stderr.String(); got != "usage: withpg [--] command [argument...]\n" {
		t.Fatalf("stderr %q", got)
	}
}
