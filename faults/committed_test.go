package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// Transactions change their own outbox rows after inserting them: a
// quarter update the payload, a quarter move next_attempt_at an hour
// ahead, a quarter delete the row, a quarter leave it. The streaming relay
// sends each row as committed: the last payload, nothing early, nothing
// deleted.
func TestRowsAreSentAsCommitted(t *testing.T) {
	d, rn := fresh(t)
	var mu sync.Mutex
	got := map[string]json.RawMessage{} // event_type → payload, per event
	rn.SetAnswer(func(w http.ResponseWriter, _ *http.Request, body []byte) bool {
		var ev struct {
			Type string          `json:"type"`
			Data json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(body, &ev); err != nil {
			t.Errorf("runner: %v", err)
		}
		mu.Lock()
		got[ev.Type] = ev.Data
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		return true
	})
	_, url := withMetrics(t, d, rn, "RELAY_CDC=on", "RELAY_SWEEP_INTERVAL=1m")
	pgtest.WaitFor(t, 30*time.Second, "the stream", func() bool { return streaming(url) })

	ctx := context.Background()
	n := scale(100, 400) / 4
	changes := []string{
		"",
		`UPDATE portal_event_outbox SET payload = '{"v": "committed"}' WHERE id = $1`,
		`UPDATE portal_event_outbox SET next_attempt_at = now() + interval '1 hour' WHERE id = $1`,
		`DELETE FROM portal_event_outbox WHERE id = $1`,
	}
	for i := range n {
		for c, change := range changes {
			tx, err := d.pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var id int64
			if err := tx.QueryRow(ctx, `INSERT INTO portal_event_outbox (event_type, payload)
				VALUES ($1, '{"v": "inserted"}') RETURNING id`, fmt.Sprintf("c%d.%d", c, i)).Scan(&id); err != nil {
				t.Fatal(err)
			}
			if change != "" {
				if _, err := tx.Exec(ctx, change, id); err != nil {
					t.Fatal(err)
				}
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Rows that are due: the plain ones and the updated ones.
	pgtest.WaitFor(t, time.Minute, "the due rows", func() bool { return d.count(t, "status = 'delivered'") >= 2*n })
	mu.Lock()
	defer mu.Unlock()
	var stale, early, deleted int
	for i := range n {
		if p, ok := got[fmt.Sprintf("c1.%d", i)]; !ok || string(p) != `{"v": "committed"}` {
			stale++
		}
		if _, ok := got[fmt.Sprintf("c2.%d", i)]; ok {
			early++
		}
		if _, ok := got[fmt.Sprintf("c3.%d", i)]; ok {
			deleted++
		}
	}
	if stale+early+deleted > 0 {
		t.Errorf("of %d each: %d updated rows sent with a payload other than the committed one, %d rescheduled rows sent early, %d deleted rows sent",
			n, stale, early, deleted)
	}
}
