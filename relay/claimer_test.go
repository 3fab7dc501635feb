package relay_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// failLaterHalf makes the claim by id split, and a later half of it fail
// with a passing error: a check constraint refuses every claim of the row
// 'refused' (a row's own refusal, which halves the batch), and the row
// 'later' fails with a serialization failure in every UPDATE after the
// first `after` ones (the statements that still hold the whole batch), by
// when an earlier half has claimed its rows.
func failLaterHalf(t *testing.T, b *bundle, after int) {
	t.Helper()
	_, err := b.pool.Exec(context.Background(), fmt.Sprintf(`
ALTER TABLE portal_event_outbox ADD CONSTRAINT never_claimed CHECK (event_type <> 'refused' OR attempts = 0);
CREATE SEQUENCE updates;
CREATE FUNCTION count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM nextval('updates'); RETURN NULL; END $$;
CREATE TRIGGER count_update BEFORE UPDATE ON portal_event_outbox FOR EACH STATEMENT EXECUTE FUNCTION count_update();
CREATE FUNCTION fail_later() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.event_type = 'later' AND currval('updates') > %d THEN
		RAISE EXCEPTION 'a passing failure' USING ERRCODE = '40001';
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER fail_later BEFORE UPDATE ON portal_event_outbox FOR EACH ROW EXECUTE FUNCTION fail_later()`, after))
	if err != nil {
		t.Fatal(err)
	}
}

// Rows an earlier half of a claim took are sent even though a later half
// failed: none stays leased with an attempt counted that never happened.
func TestClaimErrorKeepsWhatWasClaimed(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		path  string
		after int // UPDATEs that hold the whole batch
		claim func(b *bundle, ids []string) error
	}{
		{"stream", 1, func(b *bundle, ids []string) error {
			_, err := b.d.DeliverIDs(context.Background(), ids)
			return err
		}},
		// The sweep's claim is refused, then the due rows are claimed by
		// id, whole once more before the halving.
		{"sweep", 2, func(b *bundle, _ []string) error {
			_, err := b.d.DeliverDue(context.Background(), 10, 0)
			return err
		}},
	} {
		t.Run(tt.path, func(t *testing.T) {
			t.Parallel()
			b := setup(t, ok, nil)
			// In due order: the claim's first half holds 'refused' and two
			// rows, its second half two rows and 'later'.
			ids := []string{insert(t, b.pool, "refused", `{}`)}
			for range 4 {
				ids = append(ids, insert(t, b.pool, "ok", `{}`))
			}
			ids = append(ids, insert(t, b.pool, "later", `{}`))
			failLaterHalf(t, b, tt.after)

			if err := tt.claim(b, ids); err == nil {
				t.Fatal("the claim met no error: the later half did not fail")
			}
			t.Cleanup(func() {
				if t.Failed() {
					for _, id := range ids {
						t.Logf("row %s: %+v", id, state(t, b.pool, id))
					}
				}
			})
			var sent []string
			pgtest.WaitFor(t, 15*time.Second, "every claimed row to be delivered or given back", func() bool {
				sent = sent[:0]
				for _, id := range ids[1:5] {
					switch s := state(t, b.pool, id); {
					case s.Status == store.StatusDelivered && s.Attempts == 1:
						sent = append(sent, id)
					case s.Status != store.StatusPending || s.Attempts != 0 || s.Next.After(time.Now()):
						return false
					}
				}
				return true
			})
			if len(sent) == 0 {
				t.Error("no row was claimed before the later half failed")
			}
			if n := len(b.runner.requests()); n != len(sent) {
				t.Errorf("the runner got %d requests for %d rows delivered", n, len(sent))
			}
		})
	}
}
