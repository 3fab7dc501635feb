package relay

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"testing/quick"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// The body's type must be encoding/json's encoding byte for byte, fast
// path or not.
func TestAppendJSONString(t *testing.T) {
	check := func(s string) bool {
		want, _ := json.Marshal(s)
		got := appendJSONString([]byte("x"), s)
		if string(got) != "x"+string(want) {
			t.Errorf("appendJSONString(%q) = %s, want %s", s, got[1:], want)
			return false
		}
		return true
	}
	for _, s := range []string{"", "file.finalized", "a b~", `q"`, `b\s`, "<a>&", "tab\t", "nl\n", "\x7f", "é", "日本", "😀",
		"\u2028\u2029", "bad\xffutf8", "\x00"} {
		check(s)
	}
	for c := range 256 {
		check(string([]byte{'a', byte(c), 'z'}))
	}
	if err := quick.Check(check, &quick.Config{MaxCount: 2000}); err != nil {
		t.Error(err)
	}
}

// sign must give what a fresh HMAC gives, whatever keys were used before
// and from however many goroutines.
func TestSignMatchesFreshHMAC(t *testing.T) {
	want := func(key []byte, id string, ts int64, body []byte) string {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(id + "." + strconv.FormatInt(ts, 10) + "."))
		m.Write(body)
		return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
	}
	keys := [][]byte{[]byte("0123456789abcdef0123456789abcdef"), []byte("other"), make([]byte, 100)}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 300 {
				key := keys[(i+g)%len(keys)]
				id := "evt-" + strconv.Itoa(i)
				body := []byte(`{"n":` + strconv.Itoa(i*g) + `}`)
				ts := int64(1_700_000_000 + i)
				if got, w := sign(key, id, ts, body), want(key, id, ts, body); got != w {
					t.Errorf("sign(%q, %s, %d) = %s, want %s", key, id, ts, got, w)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestHeaderNamesCanonical(t *testing.T) {
	for _, k := range []string{headerContentType, headerUserAgent, headerIdempotencyKey, headerWebhookID, headerWebhookTimestamp,
		headerWebhookSignature, headerAuthorization, headerTraceparent, headerTracestate} {
		if c := http.CanonicalHeaderKey(k); c != k {
			t.Errorf("%q is not canonical: %q", k, c)
		}
	}
}

// setHeader must give the header that http.Header.Set would, for every
// combination of settings.
func TestSetHeaderAsSet(t *testing.T) {
	r := store.Row{EventID: "0196a1c2-7d3e-7c4b-9a51-3f2e8d6b1a90"}
	body := []byte(`{"id":"x"}`)
	const now = 1_777_777_777
	for _, signed := range []bool{false, true} {
		for _, token := range []string{"", "tok"} {
			for _, tc := range [][2]string{{}, {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", ""}, {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "k=v"}} {
				cfg := Config{UserAgent: "outbox-relay", Token: token}
				if signed {
					cfg.SigningKey = []byte("secret")
				}
				r.Traceparent, r.Tracestate = tc[0], tc[1]
				want := http.Header{}
				want.Set("Content-Type", "application/json")
				want.Set("User-Agent", cfg.UserAgent)
				want.Set("Idempotency-Key", r.EventID)
				if signed {
					want.Set("webhook-id", r.EventID)
					want.Set("webhook-timestamp", strconv.FormatInt(now, 10))
					want.Set("webhook-signature", sign(cfg.SigningKey, r.EventID, now, body))
				}
				if token != "" {
					want.Set("Authorization", "Bearer "+token)
				}
				if r.Traceparent != "" {
					want.Set("traceparent", r.Traceparent)
					if r.Tracestate != "" {
						want.Set("tracestate", r.Tracestate)
					}
				}
				got := http.Header{}
				setHeader(got, &cfg, &r, body, now)
				if len(got) != len(want) {
					t.Errorf("signed %v token %q trace %q: %d headers, want %d: %v", signed, token, tc, len(got), len(want), got)
				}
				for k, v := range want {
					if g := got[k]; len(g) != 1 || g[0] != v[0] {
						t.Errorf("signed %v token %q trace %q: %s = %q, want %q", signed, token, tc, k, g, v)
					}
				}
				// One value each, so an Add elsewhere cannot write into the next.
				got.Add("User-Agent", "more")
				if got.Get("Idempotency-Key") != r.EventID {
					t.Error("an Add overwrote another header's value")
				}
			}
		}
	}
}

// benchRow is a typical event: a uuid, a short type, a small payload.
func benchRow() *store.Row {
	return &store.Row{
		ID:        "123456",
		EventID:   "0196a1c2-7d3e-7c4b-9a51-3f2e8d6b1a90",
		Type:      "file.finalized",
		Payload:   json.RawMessage(`{"file": 42, "owner": "someone@example.com", "size": 1048576}`),
		CreatedAt: time.Date(2026, 5, 1, 12, 30, 45, 123456000, time.UTC),
		Attempt:   1,
	}
}

// BenchmarkRequest is building the request, the POST itself left out.
func BenchmarkRequest(b *testing.B) {
	for _, bc := range benchConfigs {
		b.Run(bc.name, func(b *testing.B) {
			cfg := Config{RunnerURL: "http://127.0.0.1:8080/events", UserAgent: "outbox-relay"}
			if bc.tweak != nil {
				bc.tweak(&cfg)
			}
			s := &sender{cfg: cfg}
			r := benchRow()
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := s.newRequest(ctx, r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkBody is the request body and its signature, without the POST.
func BenchmarkBody(b *testing.B) {
	r := benchRow()
	key := []byte("0123456789abcdef0123456789abcdef")
	b.ReportAllocs()
	for b.Loop() {
		body := appendBody(make([]byte, 0, 160+len(r.Type)+len(r.Payload)), r)
		_ = sign(key, r.EventID, 1777777777, body)
	}
}
