package relay

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"hash"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// appendBody writes the request body of docs/http.md. data is the stored
// jsonb text copied as it is: it is valid JSON already, and re-encoding a
// large payload would cost more than the POST.
func appendBody(b []byte, r *store.Row) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendQuote(b, r.EventID) // a uuid: nothing to escape
	b = append(b, `,"type":`...)
	b = appendJSONString(b, r.Type)
	b = append(b, `,"timestamp":"`...)
	b = r.CreatedAt.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","attempt":`...)
	b = strconv.AppendInt(b, int64(r.Attempt), 10)
	b = append(b, `,"data":`...)
	b = append(b, r.Payload...)
	return append(b, '}')
}

// appendJSONString appends s as encoding/json encodes a string. An event
// type is nearly always printable ASCII that json leaves as it is: that is
// copied without json's allocations; anything else goes through json, so
// the bytes are json's in every case (TestAppendJSONString).
func appendJSONString(b []byte, s string) []byte {
	for i := range len(s) {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// newRequest builds the POST of row r and returns its body too, which do
// sends again on a quick retry.
func (s *sender) newRequest(ctx context.Context, r *store.Row) (*http.Request, []byte, error) {
	// A fresh buffer per request: the transport may still be reading the
	// body when Do returns (an early answer), so it cannot be reused.
	body := appendBody(make([]byte, 0, 160+len(r.Type)+len(r.Payload)), r)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.RunnerURL, nil)
	if err != nil {
		return nil, nil, err
	}
	req.ContentLength = int64(len(body))
	// The transport rewinds with GetBody to resend on a kept-alive
	// connection the runner had closed.
	req.GetBody = func() (io.ReadCloser, error) { return newBodyReader(body), nil }
	setHeader(req.Header, &s.cfg, r, body, time.Now().Unix())
	return req, body, nil
}

// sign computes the Standard Webhooks signature of body:
// base64(HMAC-SHA256(key, "<id>.<timestamp>.<body>")).
func sign(key []byte, id string, ts int64, body []byte) string {
	m, _ := macs.Get().(*keyedMAC)
	if m == nil || !bytes.Equal(m.key, key) {
		m = &keyedMAC{key: bytes.Clone(key), h: hmac.New(sha256.New, key)}
	} else {
		m.h.Reset()
	}
	b := append(m.buf[:0], id...)
	b = append(b, '.')
	b = strconv.AppendInt(b, ts, 10)
	b = append(b, '.')
	m.h.Write(b)
	m.h.Write(body)
	sum := m.h.Sum(b[:0])
	var enc [44]byte // base64 of 32 bytes
	base64.StdEncoding.Encode(enc[:], sum)
	m.buf = sum
	macs.Put(m)
	var sb strings.Builder
	sb.Grow(len("v1,") + len(enc))
	sb.WriteString("v1,")
	sb.Write(enc[:])
	return sb.String()
}

// macs keeps HMACs for reuse: hmac.New allocates its digests and pads for
// every signature. A process signs with one key, so a pooled HMAC nearly
// always has it; one with another key (tests) is replaced.
var macs sync.Pool // of *keyedMAC

type keyedMAC struct {
	key []byte
	h   hash.Hash
	buf []byte // "<id>.<timestamp>.", then the sum, kept for the next use
}

// setHeader fills h, a new request's empty header, for row r with body;
// now is the Unix time the signature states.
func setHeader(h http.Header, cfg *Config, r *store.Row, body []byte, now int64) {
	n := 3
	if cfg.SigningKey != nil {
		n += 3
	}
	if cfg.Token != "" {
		n++
	}
	if r.Traceparent != "" {
		n += 2 // tracestate, if any
	}
	hs := headers{h: h, vals: make([]string, 0, n)}
	hs.set(headerContentType, "application/json")
	hs.set(headerUserAgent, cfg.UserAgent)
	hs.set(headerIdempotencyKey, r.EventID)
	if cfg.SigningKey != nil {
		hs.set(headerWebhookID, r.EventID)
		hs.set(headerWebhookTimestamp, strconv.FormatInt(now, 10))
		hs.set(headerWebhookSignature, sign(cfg.SigningKey, r.EventID, now, body))
	}
	if cfg.Token != "" {
		hs.set(headerAuthorization, "Bearer "+cfg.Token)
	}
	if r.Traceparent != "" {
		setTraceHeaders(&hs, r)
	}
}

// The request's header names in canonical form, as http.Header.Set would
// store them (TestHeaderNamesCanonical).
const (
	headerContentType      = "Content-Type"
	headerUserAgent        = "User-Agent"
	headerIdempotencyKey   = "Idempotency-Key"
	headerWebhookID        = "Webhook-Id"
	headerWebhookTimestamp = "Webhook-Timestamp"
	headerWebhookSignature = "Webhook-Signature"
	headerAuthorization    = "Authorization"
	headerTraceparent      = "Traceparent"
	headerTracestate       = "Tracestate"
)

// headers fills a request's header with one value per name, all values
// in one backing array: http.Header.Set allocates a slice for each.
type headers struct {
	h    http.Header
	vals []string
}

// set sets the canonical name k to v.
func (hs *headers) set(k, v string) {
	hs.vals = append(hs.vals, v)
	n := len(hs.vals)
	// Capped at one value, so that an Add by anyone else copies rather
	// than writes over the next header's value.
	hs.h[k] = hs.vals[n-1 : n : n]
}
