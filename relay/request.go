package relay

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// appendBody writes the request body of DESIGN.md. data is the stored
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

func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always marshals
	return append(b, q...)
}

// sign computes the Standard Webhooks signature of body:
// base64(HMAC-SHA256(key, "<id>.<timestamp>.<body>")).
func sign(key []byte, id string, ts int64, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id))
	m.Write([]byte{'.'})
	m.Write(strconv.AppendInt(nil, ts, 10))
	m.Write([]byte{'.'})
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}
