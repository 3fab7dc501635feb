package relaytest

import (
	"context"
	"net/http"
	"testing"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// NewStore migrates the outbox table and Insert fills it with pending
// rows numbered from 1 in their payload.
func TestStoreAndInsert(t *testing.T) {
	st := NewStore(t)
	Insert(t, st, 3, "kit.test")
	var n, sum int
	if err := st.Pool().QueryRow(context.Background(), `SELECT count(*), sum((payload->>'i')::int) FROM `+
		Table.Ident()+` WHERE status = 'pending' AND event_type = 'kit.test'`).Scan(&n, &sum); err != nil {
		t.Fatal(err)
	}
	if n != 3 || sum != 6 {
		t.Errorf("%d pending rows with i summing to %d, want 3 and 6", n, sum)
	}
}

// AnswerBy reads the event from the body and counts the requests of its
// id: its status decides the answer and whether the event counts as
// accepted.
func TestAnswerBy(t *testing.T) {
	rn := NewRunner(t)
	rn.SetAnswer(AnswerBy(func(_ *http.Request, e Event) int {
		if e.Type == "poison" || e.Attempt < 2 || e.Try > 2 {
			return 503
		}
		return 204
	}))
	for _, tc := range []struct {
		key, body string
		want      int
	}{
		{"a", `{"id":"a","type":"ok","attempt":1,"data":{}}`, 503},
		{"a", `{"id":"a","type":"ok","attempt":2,"data":{}}`, 204},
		{"b", `{"id":"b","type":"poison","attempt":2,"data":{}}`, 503},
		{"a", `{"id":"a","type":"ok","attempt":3,"data":{}}`, 503},
		{"c", `not json`, 503},
	} {
		if got := post(t, rn.URL(), tc.key, []byte(tc.body)); got != tc.want {
			t.Errorf("%s: answered %d, want %d", tc.body, got, tc.want)
		}
	}
	if got := rn.Accepted(); len(got) != 1 || got["a"] != 1 {
		t.Errorf("accepted %v, want a once", got)
	}
}
