package faults

import (
	"context"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// mode is how a fault test uses the outbox: in any order, or in order per
// key (RELAY_COLUMNS=ordering_key=entity), where it also checks that each
// key's first acceptances follow the key's row order.
type mode struct{ ordered bool }

var (
	unordered = mode{}
	ordered   = mode{ordered: true}
)

// keysPerConn is how many keys each inserting connection writes.
const keysPerConn = 10

// fault is the name of the fault's row in docs/RELIABILITY.md.
func (m mode) fault(name string) string {
	if m.ordered {
		return "ordered: " + name
	}
	return name
}

func (m mode) db(t *testing.T, url string) *db {
	t.Helper()
	if !m.ordered {
		return newDB(t, url)
	}
	cols, err := store.ParseColumns("ordering_key=entity")
	if err != nil {
		t.Fatal(err)
	}
	return newDBWith(t, url, store.Planned(relaytest.Table, cols, store.DefaultStatuses()))
}

func (m mode) env(d *db, rn *relaytest.Runner, extra ...string) []string {
	if m.ordered {
		extra = append(extra, "RELAY_COLUMNS=ordering_key=entity")
	}
	return relayEnv(d, rn, extra...)
}

func (m mode) inserter(t *testing.T, d *db, rate, conns int) *inserter {
	if m.ordered {
		return startKeyedInserter(t, d, rate, conns, keysPerConn)
	}
	return startInserter(t, d, rate, conns)
}

// verify is the harness's verify, and on an ordered outbox the order
// check: every violation fails the test.
func (m mode) verify(t *testing.T, d *db, rn *relaytest.Runner, limit time.Duration) result {
	t.Helper()
	r := verify(t, d, rn, limit)
	if !m.ordered {
		return r
	}
	keyed, err := relaytest.ReadKeyedRows(context.Background(), d.pool, "portal_event_outbox", "entity")
	if err != nil {
		t.Fatal(err)
	}
	v := relaytest.OrderViolations(keyed, rn.FirstAcceptances())
	r.OrderViolations = &[]int{len(v)}[0]
	if len(v) > 0 {
		t.Errorf("%d order violations, first: %s", len(v), v[0])
	}
	keys := map[string]bool{}
	for _, k := range keyed {
		keys[k.Key] = true
	}
	t.Logf("order violations %d over %d keys", len(v), len(keys))
	return r
}

func TestOrderedRelayKilled(t *testing.T)       { relayKilled(t, ordered) }
func TestOrderedPostgresRestarted(t *testing.T) { postgresRestarted(t, ordered) }
func TestOrderedThreeReplicas(t *testing.T)     { threeReplicas(t, ordered) }
func TestOrderedFlakyRunner(t *testing.T)       { flakyRunner(t, ordered) }
