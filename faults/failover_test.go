package faults

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

// The primary crashes under load and its synchronous standby is promoted;
// the relay and the inserter, on a two-host URL, follow it. No commit the
// inserter saw is lost, every event is delivered, and a duplicate can only
// be a POST whose outcome write the crash cut.
func TestFailoverSync(t *testing.T) {
	f := failover(t, scenario{sync: true})
	if f.dbLost != 0 {
		t.Errorf("%d commits the inserter saw are missing on the promoted synchronous standby", f.dbLost)
	}
	if len(f.extra) != 0 {
		t.Errorf("the runner got %d events the promoted synchronous standby does not hold", len(f.extra))
	}
	if f.r.Duplicates > concurrency {
		t.Errorf("%d duplicates, more than the %d POSTs that can be in flight at the crash", f.r.Duplicates, concurrency)
	}
	record(t, "failover, synchronous standby", f.r, f.figures())
}

// The same with an asynchronous standby: the database itself may lose the
// last commits (events with the business rows they describe); the relay
// delivers every row the new primary has.
func TestFailoverAsync(t *testing.T) {
	if !full {
		t.Skip("the asynchronous case runs under make faults (RELAY_FAULTS=full); make test runs the synchronous one")
	}
	f := failover(t, scenario{})
	t.Logf("the database lost %d of %d commits the inserter saw; the runner got %d events the new primary does not hold",
		f.dbLost, f.committed, len(f.extra))
	record(t, "failover, asynchronous standby", f.r, f.figures())
}

// switchFigures is what one failover run measured.
type switchFigures struct {
	r         result
	extra     []string // accepted by the runner, absent on the new primary
	committed int      // commits the inserter saw
	dbLost    int      // of those, absent on the new primary
	// promotion is how long pg_ctl promote took; firstDelivery the time
	// from the end of the promotion to the first event the runner got
	// after it; longestWait the longest created_at-to-first-receipt of
	// any event, longestAcross of the events received after the crash.
	promotion, firstDelivery, longestWait, longestAcross time.Duration
	// streamAfter and sweepAfter are the events delivered from the
	// promotion on by the stream and by a sweep.
	streamAfter, sweepAfter float64
	pair                    *pgtest.Pair
	logs                    string // the relay's
}

// scenario is how a failover run is set up.
type scenario struct {
	sync     bool // a synchronous standby
	pairOpts []pgtest.PairOption
	// ready runs once the relay streams, before the load starts; atCrash
	// under load just before the primary crashes.
	ready, atCrash func(*pgtest.Pair)
}

func (f switchFigures) figures() map[string]string {
	ms := func(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }
	return map[string]string{
		"committed":                       strconv.Itoa(f.committed),
		"db_lost":                         strconv.Itoa(f.dbLost),
		"delivered_not_on_new_primary":    strconv.Itoa(len(f.extra)),
		"promotion_ms":                    ms(f.promotion),
		"promotion_to_first_delivery_ms":  ms(f.firstDelivery),
		"longest_wait_of_any_event_ms":    ms(f.longestWait),
		"longest_wait_across_switch_ms":   ms(f.longestAcross),
		"inserts_per_second":              "200",
		"delivered_after_switch_stream":   fmt.Sprint(f.streamAfter),
		"delivered_after_switch_sweep":    fmt.Sprint(f.sweepAfter),
		"inserts_before_and_after_switch": strconv.Itoa(scale(2, 10)) + "s+" + strconv.Itoa(scale(2, 20)) + "s",
	}
}

// failover runs the scenario: load, crash of the primary (-m immediate),
// promotion of the standby, more load on the new primary, then waits until
// the new primary has nothing pending and measures.
func failover(t *testing.T, sc scenario) switchFigures {
	pair := pgtest.StartPair(t, sc.sync, sc.pairOpts...)
	d := newDB(t, pair.URL("postgres"))
	rn := relaytest.NewRunner(t)
	p, metrics := withMetrics(t, d, rn, "RELAY_CONCURRENCY="+strconv.Itoa(concurrency))
	// Rows committed before the first slot exists wait for the sweep's
	// grace: a start-up figure, not the switch's.
	pgtest.WaitFor(t, 30*time.Second, "the stream", func() bool { return streaming(metrics) })
	if sc.ready != nil {
		sc.ready(pair)
	}
	in := startInserter(t, d, 200, 4)
	pgtest.WaitFor(t, 30*time.Second, "deliveries before the switch", func() bool { return len(rn.Accepted()) > 0 })
	time.Sleep(time.Duration(scale(2, 10)) * time.Second) // load runs for a while: the fault's timing
	if sc.atCrash != nil {
		sc.atCrash(pair)
	}

	crashed := time.Now()
	if err := pair.Primary.StopServer("immediate"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := pair.Promote(); err != nil {
		t.Fatal(err)
	}
	promoted := time.Now()
	streamBefore, sweepBefore := deliveredBy(metrics)
	time.Sleep(time.Duration(scale(2, 20)) * time.Second) // inserts go on against the new primary
	in.stop()

	f := switchFigures{promotion: promoted.Sub(start), pair: pair}
	f.r, f.extra = compare(t, d, rn, 2*time.Minute)
	streamEnd, sweepEnd := deliveredBy(metrics)
	f.streamAfter, f.sweepAfter = streamEnd-streamBefore, sweepEnd-sweepBefore
	onNew := d.eventIDs(t)
	committed := in.committed()
	f.committed = len(committed)
	for id := range committed {
		if !onNew[id] {
			f.dbLost++
		}
	}
	f.firstDelivery, f.longestWait, f.longestAcross = waits(t, d, rn, crashed, promoted)
	pgtest.WaitFor(t, 30*time.Second, "the relay to log the switch", func() bool {
		return strings.Contains(p.Logs(), "now following another server")
	})
	select {
	case <-p.Done():
		t.Fatalf("the relay exited during the failover: %v", p.Err())
	default:
	}
	f.logs = p.Logs()
	t.Logf("promotion %s, promotion to first delivery %s, longest wait of any event %s (of those received after the crash %s), committed %d, lost by the database %d, delivered after the switch by the stream %v, by a sweep %v",
		f.promotion.Round(time.Millisecond), f.firstDelivery.Round(time.Millisecond), f.longestWait.Round(time.Millisecond),
		f.longestAcross.Round(time.Millisecond), f.committed, f.dbLost, f.streamAfter, f.sweepAfter)
	if testing.Verbose() {
		t.Logf("relay logs around the switch:\n%s", switchLines(f.logs))
	}
	return f
}

// deliveredBy is how many events the relay has delivered by the stream
// and by a sweep, from its metrics.
func deliveredBy(metrics string) (stream, sweep float64) {
	stream, _ = scrape(metrics, `outbox_relay_deliveries_total{outcome="delivered",path="stream"}`)
	sweep, _ = scrape(metrics, `outbox_relay_deliveries_total{outcome="delivered",path="sweep"}`)
	return stream, sweep
}

// waits measures, from the runner's first receipts, the time from promoted
// to the first event received after it, and the longest time any event of
// the table waited from its created_at to its first receipt: of all
// events, and of those received after the crash (the switch's own figure;
// in steady state an event the stream's claim does not see yet waits for
// the sweep's grace).
func waits(t *testing.T, d *db, rn *relaytest.Runner, crashed, promoted time.Time) (first, longest, across time.Duration) {
	t.Helper()
	receipts := rn.FirstReceipts()
	first = -1
	for _, at := range receipts {
		if at.After(promoted) && (first < 0 || at.Sub(promoted) < first) {
			first = at.Sub(promoted)
		}
	}
	rows, err := d.pool.Query(context.Background(), `SELECT event_id::text, created_at FROM portal_event_outbox`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var created time.Time
		if err := rows.Scan(&id, &created); err != nil {
			t.Fatal(err)
		}
		at, ok := receipts[id]
		if !ok {
			continue
		}
		longest = max(longest, at.Sub(created))
		if at.After(crashed) {
			across = max(across, at.Sub(created))
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return first, longest, across
}

// switchLines are the relay's log lines about the switch and the stream.
func switchLines(logs string) string {
	var out []string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "replication") || strings.Contains(l, "sweep") || strings.Contains(l, "record") {
			out = append(out, l)
		}
	}
	return relaytest.LastLines(strings.Join(out, "\n"), 30)
}
