package relaytest

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// The test kit: what the tests of every package need to put the relay's
// pieces on a real database and a real runner. A test gets a migrated
// store (NewStore), rows in it (Insert) and a recording runner that is
// stopped when it ends (NewRunner, with AnswerBy to choose the answers).

// Table is the outbox table of the kit's stores, the relay's default.
var Table = store.Table{Schema: "public", Name: "portal_event_outbox"}

// NewStore is a Store on Table with its default columns, migrated in a
// fresh database of the shared test server (pgtest.NewDB), its pool set
// up as the relay sets up its own (store.Configure). The pool is closed
// when the test ends.
func NewStore(t testing.TB) *store.Store {
	t.Helper()
	return StoreAt(t, pgtest.NewDB(t))
}

// StoreAt is NewStore on the database at url: a cluster of the test's own
// (pgtest.StartT), for a test that stops or restarts the server.
func StoreAt(t testing.TB, url string) *store.Store {
	t.Helper()
	return MigrateAt(t, url, store.DefaultSchema(Table), "")
}

// MigrateAt is StoreAt with the table migrate makes for schema, and with
// publication (when not empty) publishing it, as the stream needs.
func MigrateAt(t testing.TB, url string, schema *store.Schema, publication string) *store.Store {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatalf("relaytest: %v", err)
	}
	store.Configure(cfg)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("relaytest: %v", err)
	}
	t.Cleanup(pool.Close)
	if _, err := store.Migrate(context.Background(), pool, schema, publication); err != nil {
		t.Fatalf("relaytest: migrate %s: %v", schema.Table.Ident(), err)
	}
	return store.New(pool, schema)
}

// Insert adds n pending events of type typ to the store's table, due now,
// each with the payload {"i": <its number from 1>}.
func Insert(t testing.TB, st *store.Store, n int, typ string) {
	t.Helper()
	if _, err := st.Pool().Exec(context.Background(), `INSERT INTO `+st.Table().Ident()+` (event_type, payload)
		SELECT $2, jsonb_build_object('i', i) FROM generate_series(1, $1) i`, n, typ); err != nil {
		t.Fatalf("relaytest: insert %d %s: %v", n, typ, err)
	}
}

// NewRunner is a Runner (StartRunner) stopped when the test ends.
func NewRunner(t testing.TB) *Runner {
	t.Helper()
	rn, err := StartRunner()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rn.Stop)
	return rn
}

// Event is the runner's reading of a request body: the event as the relay
// sends it, and which request for its event id (Idempotency-Key) this is.
type Event struct {
	ID        string          `json:"id"`
	Type      string          `json:"type"`
	Attempt   int             `json:"attempt"`
	Timestamp string          `json:"timestamp"`
	Data      json.RawMessage `json:"data"`
	Try       int             `json:"-"` // 1 for the first request of the id
}

// AnswerBy is the Answer that replies to each request with the status
// code gives its event (a body that is not an event reads as an Event
// with only Try set). A 2xx status counts as accepted. code may block,
// until r's context ends at the latest.
func AnswerBy(code func(r *http.Request, e Event) int) Answer {
	var mu sync.Mutex
	tries := map[string]int{}
	return func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		var e Event
		_ = json.Unmarshal(body, &e)
		key := r.Header.Get("Idempotency-Key")
		mu.Lock()
		tries[key]++
		e.Try = tries[key]
		mu.Unlock()
		status := code(r, e)
		w.WriteHeader(status)
		return status >= 200 && status < 300
	}
}
