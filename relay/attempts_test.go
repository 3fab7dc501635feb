package relay_test

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/sweeper"
)

// A healthy runner answers each of 50 rows 503, 503, then 204, and every
// other row 204: each of the 50 ends delivered with attempts = 3, one per
// request, also when its 503 comes right after another row's 503 with no
// answer between.
//
// The 50 come in pairs, due together every 250 ms, and so are claimed
// together and in flight together while the concurrency limit allows; a
// pair is retried together too (no jitter). Another row is due every
// 25 ms throughout. So the runner fails at most a pair's two requests in
// a row, or four when a pair's retries meet the next pair: never the five
// that open the breaker, which must stay closed (a probe's answer does
// not count, by the rule under test).
func TestAttemptsCountEveryAnsweredRequest(t *testing.T) {
	t.Parallel()
	const pairs, others = 25, 260
	st := relaytest.NewStore(t)
	pool := st.Pool()
	rn := relaytest.NewRunner(t)
	rn.SetAnswer(relaytest.AnswerBy(func(_ *http.Request, e relaytest.Event) int {
		if e.Type == "flaky" && e.Try <= 2 {
			return http.StatusServiceUnavailable
		}
		return http.StatusNoContent
	}))

	logs := &relaytest.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	d := relay.New(relay.Config{
		RunnerURL: rn.URL(), HTTPTimeout: 5 * time.Second, Concurrency: 4, MaxAttempts: 10,
		// Without jitter the two rows of a pair are due again together.
		Backoff:       relay.Backoff{Base: 50 * time.Millisecond, Max: time.Second},
		ShutdownGrace: 5 * time.Second,
	}, st, log, nil)
	startDeliverer(t, d)
	runSweeper(t, sweeper.New(sweeper.Config{Interval: 100 * time.Millisecond, BatchSize: 100}, d, st, log))

	// Due from 300 ms on, once the sweeper runs.
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO portal_event_outbox (event_type, payload, next_attempt_at)
		SELECT 'flaky', jsonb_build_object('pair', k, 'of', m), now() + (300 + 250 * k) * interval '1 ms'
		FROM generate_series(0, $1 - 1) k, generate_series(1, 2) m
		UNION ALL
		SELECT 'other', jsonb_build_object('i', i), now() + (300 + 25 * i + 12.5) * interval '1 ms'
		FROM generate_series(0, $2 - 1) i`, pairs, others); err != nil {
		t.Fatal(err)
	}

	pgtest.WaitFor(t, time.Minute, "every row to be delivered", func() bool {
		var pending int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM portal_event_outbox WHERE status <> 'delivered'`).Scan(&pending); err != nil {
			t.Fatal(err)
		}
		return pending == 0
	})
	rows, err := pool.Query(ctx, `SELECT attempts, count(*) FROM portal_event_outbox WHERE event_type = 'flaky' GROUP BY 1 ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	byAttempts := map[int]int{}
	for rows.Next() {
		var attempts, n int
		if err := rows.Scan(&attempts, &n); err != nil {
			t.Fatal(err)
		}
		byAttempts[attempts] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if byAttempts[3] != 2*pairs {
		t.Errorf("the %d rows answered 503, 503, 204 end with attempts %v (attempts: rows), want all at 3", 2*pairs, byAttempts)
	}
	var otherAttempts int
	if err := pool.QueryRow(ctx, `SELECT coalesce(sum(attempts), 0) FROM portal_event_outbox WHERE event_type = 'other'`).Scan(&otherAttempts); err != nil {
		t.Fatal(err)
	}
	c := rn.Counts()
	sent, extra := c.Distinct, c.Requests-c.Distinct
	if sent != 2*pairs+others || extra != 2*2*pairs || otherAttempts != others {
		t.Errorf("the runner got %d events and %d requests beyond the first of each, the others count %d attempts; want %d, %d and %d",
			sent, extra, otherAttempts, 2*pairs+others, 2*2*pairs, others)
	}
	if strings.Contains(logs.String(), "runner down") {
		t.Errorf("the breaker opened on a runner that answers all but 50 rows at once:\n%s", logs.String())
	}
}
