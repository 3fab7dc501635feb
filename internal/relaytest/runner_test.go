package relaytest

import (
	"bytes"
	"context"
	"net/http"
	"testing"
	"time"
)

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
