package relaytest

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestBufferKeepsTheTail(t *testing.T) {
	b := &Buffer{Limit: 5}
	for _, s := range []string{"abc", "defg", "h"} {
		if _, err := b.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	if got := b.String(); got != "defgh" {
		t.Errorf("kept %q, want the last 5 bytes %q", got, "defgh")
	}
	var all Buffer
	_, _ = all.Write([]byte("one\ntwo\nthree\n"))
	if got := LastLines(all.String(), 2); got != "two\nthree" {
		t.Errorf("LastLines = %q", got)
	}
}

func TestLineWriterHandsOverWholeLines(t *testing.T) {
	var lines []string
	w := &lineWriter{fn: func(l string) { lines = append(lines, l) }}
	for _, s := range []string{"a", "b\nc\n", "d"} {
		_, _ = w.Write([]byte(s))
	}
	w.flush()
	if got := strings.Join(lines, "|"); got != "ab|c|d" {
		t.Errorf("lines %q, want ab|c|d", got)
	}
}

func post(t *testing.T, url, key string, body []byte) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Idempotency-Key", key)
	req.Close = true // no idle connection left for goleak
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestRunnerRecordsReceipts(t *testing.T) {
	rn, err := StartRunner()
	if err != nil {
		t.Fatal(err)
	}
	defer rn.Stop()
	if code := post(t, rn.URL(), "a", nil); code != http.StatusNoContent {
		t.Errorf("default answer %d, want 204", code)
	}
	rn.SetAnswer(func(w http.ResponseWriter, _ *http.Request, body []byte) bool {
		if string(body) == "fail" {
			w.WriteHeader(http.StatusServiceUnavailable)
			return false
		}
		return true
	})
	post(t, rn.URL(), "b", []byte("fail"))
	post(t, rn.URL(), "a", []byte("ok"))
	c := rn.Counts()
	if c.Requests != 3 || c.Distinct != 2 || c.First.After(c.Last) {
		t.Errorf("counts %+v, want 3 requests of 2 ids", c)
	}
	if got := rn.Accepted(); len(got) != 1 || got["a"] != 2 {
		t.Errorf("accepted %v, want a twice and b never", got)
	}
	if got := rn.FirstReceipts(); len(got) != 2 {
		t.Errorf("first receipts %v, want a and b", got)
	}

	rn.Reset(false, 0)
	post(t, rn.URL(), "a", []byte("ok"))
	if c := rn.Counts(); c.Requests != 1 || c.Distinct != 1 || len(rn.FirstReceipts()) != 0 {
		t.Errorf("count-only mode: %+v", c)
	}
	ok, err := rn.WaitDistinct(context.Background(), 1, time.Second)
	if !ok || err != nil {
		t.Errorf("WaitDistinct = %v, %v", ok, err)
	}

	rn.Stop()
	if _, err := http.Post(rn.URL(), "text/plain", nil); err == nil {
		t.Error("a stopped runner still answers")
	}
	if err := rn.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	if code := post(t, rn.URL(), "c", []byte("ok")); code != http.StatusOK {
		t.Errorf("after Restart: %d", code)
	}
}

func TestProcessStopAndExit(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	var echoed Buffer
	p, err := Start(Command{Binary: sh, Args: []string{"-c", `echo started; trap 'echo bye; exit 3' TERM; while :; do sleep 0.05; done`},
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

func TestBuildSetsTheVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the relay")
	}
	bin, err := Build(context.Background(), t.TempDir(), BuildOptions{Version: "relaytest-v1"})
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "relaytest-v1") {
		t.Errorf("version: %v %q", err, out)
	}
}

// The order check finds a key's rows accepted out of order, and only
// those: other keys, rows without a key and dead rows do not count.
func TestOrderViolations(t *testing.T) {
	rows := []KeyedRow{{"a1", "a", false}, {"b1", "b", false}, {"a2", "a", true}, {"n1", "", false}, {"a3", "a", false}, {"b2", "b", false}}
	for _, tc := range []struct {
		name     string
		accepted []string
		want     int
	}{
		{"in order", []string{"a1", "b1", "n1", "a3", "b2"}, 0},
		{"keys interleaved, dead row late", []string{"b1", "a1", "b2", "a3", "a2", "n1"}, 0},
		{"a key reversed", []string{"a3", "a1", "b1", "b2"}, 1},
		{"two keys reversed", []string{"b2", "a3", "b1", "a1"}, 2},
	} {
		if got := OrderViolations(rows, tc.accepted); len(got) != tc.want {
			t.Errorf("%s: %d violations %v, want %d", tc.name, len(got), got, tc.want)
		}
	}
}
