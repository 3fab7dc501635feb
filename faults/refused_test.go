package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/monitor"
	"github.com/outbox-relay/outbox-relay/internal/pgtest"
)

// A trigger raises on the outcome write of one chosen row while events
// flow: every other row is delivered exactly once, the chosen row is sent
// once and reported (log, metric, /readyz, status) instead of stopping the
// relay, and it is recorded as soon as the database accepts the write.
func TestRefusedOutcomeWrite(t *testing.T) {
	d, rn := fresh(t)
	ctx := context.Background()
	if _, err := d.pool.Exec(ctx, `CREATE FUNCTION refuse_chosen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'the chosen row may not be marked %', NEW.status;
END $$;
CREATE TRIGGER refuse_chosen BEFORE UPDATE ON portal_event_outbox FOR EACH ROW
	WHEN (NEW.event_type = 'chosen' AND NEW.status <> 'pending') EXECUTE FUNCTION refuse_chosen()`); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	env := relayEnv(d, rn, "RELAY_LISTEN_ADDR="+addr)
	p := startRelay(t, env)
	in := startInserter(t, d, scale(200, 500), 4)
	pgtest.WaitFor(t, 30*time.Second, "the first deliveries", func() bool { return len(rn.Accepted()) > 50 })
	var chosen, chosenID string
	if err := d.pool.QueryRow(ctx, `INSERT INTO portal_event_outbox (event_type) VALUES ('chosen') RETURNING event_id::text, id::text`).
		Scan(&chosen, &chosenID); err != nil {
		t.Fatal(err)
	}
	// Events keep flowing around the refused row.
	after := len(rn.Accepted())
	pgtest.WaitFor(t, 60*time.Second, "deliveries after the refusal", func() bool {
		return rn.Accepted()[chosen] == 1 && len(rn.Accepted()) > after+scale(200, 2000)
	})
	in.stop()
	pgtest.WaitFor(t, 60*time.Second, "every other row to be delivered", func() bool {
		return d.count(t, "status <> 'delivered' AND event_type <> 'chosen'") == 0
	})

	// Reported: once in the log with its id and SQLSTATE, in the metric,
	// in /readyz and by status.
	logs := p.Logs()
	if n := strings.Count(logs, "the database refused to write a row"); n != 1 || !strings.Contains(logs, `"id":"`+chosenID+`"`) || !strings.Contains(logs, `"sqlstate":"P0001"`) {
		t.Errorf("the refusal is logged %d times, want once with the row's id and SQLSTATE", n)
	}
	if v, err := scrape("http://"+addr+"/metrics", `outbox_relay_write_errors_total{statement="record"}`); err != nil || v < 1 {
		t.Errorf("outbox_relay_write_errors_total{statement=\"record\"} = %v, %v", v, err)
	}
	ready := readiness(t, addr)
	if len(ready.WriteErrors) != 1 || ready.WriteErrors[0].ID != chosenID || ready.WriteErrors[0].Statement != "record" {
		t.Errorf("/readyz write_errors = %+v, want the chosen row's record", ready.WriteErrors)
	}
	code, out := runOnce(t, append(env, "RELAY_LOG_LEVEL=warn"), "status")
	if code != 1 || !strings.Contains(out, "row "+chosenID+": the database refuses its record (SQLSTATE P0001") {
		t.Errorf("status: exit %d\n%s", code, out)
	}

	// Once the database accepts the write, the held outcome is recorded:
	// the row was delivered, it is not sent again.
	if _, err := d.pool.Exec(ctx, `DROP TRIGGER refuse_chosen ON portal_event_outbox`); err != nil {
		t.Fatal(err)
	}
	r := verify(t, d, rn, 2*time.Minute)
	if n := rn.Accepted()[chosen]; n != 1 {
		t.Errorf("the chosen row was sent %d times, want once", n)
	}
	if r.Duplicates > 0 {
		t.Errorf("%d duplicates, want none", r.Duplicates)
	}
	pgtest.WaitFor(t, 10*time.Second, "/readyz to clear", func() bool { return len(readiness(t, addr).WriteErrors) == 0 })
	record(t, "a trigger refuses one row's outcome write", r, map[string]string{"refused_row_sends": fmt.Sprint(rn.Accepted()[chosen])})
}

func readiness(t *testing.T, addr string) monitor.Readiness {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r monitor.Readiness
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	return r
}
