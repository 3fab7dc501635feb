package faults

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// txMix is the soak's mix of application transactions, by weight. Every
// row's payload names its kind, so that the checks know what its
// transaction did to it.
var txMix = []struct {
	kind   string
	weight int
}{
	{"plain", 20},     // one INSERT
	{"update", 15},    // INSERT, then UPDATE of its payload: the new one is due
	{"reschedule", 8}, // INSERT, then next_attempt_at a day ahead: not due in the soak
	{"delete", 10},    // INSERT, then DELETE: never to be sent
	{"retry", 10},     // INSERT with attempts = 3, as an application re-inserts a failed event
	{"flaky", 10},     // one INSERT; the runner answers 503 to its first two requests
	{"ordered", 27},   // one to three INSERTs of one key (ordered tables only)
}

// The load: per lane, loadConns connections each write loadRate
// transactions a second; each connection owns loadKeys ordering keys, so
// that one key's transactions never commit concurrently (the ordering
// contract).
const (
	loadConns = 2
	loadRate  = 8
	loadKeys  = 5
)

const insertSQL = `INSERT INTO portal_event_outbox (event_type, payload, entity, attempts)
	VALUES ($1, $2, $3, $4) RETURNING event_id::text`

// followSQL is what a kind's transaction does to its row after the INSERT.
var followSQL = map[string]string{
	"update":     `UPDATE portal_event_outbox SET payload = payload || '{"v": 2}' WHERE event_id = $1::uuid`,
	"reschedule": `UPDATE portal_event_outbox SET next_attempt_at = now() + interval '1 day' WHERE event_id = $1::uuid`,
	"delete":     `DELETE FROM portal_event_outbox WHERE event_id = $1::uuid`,
}

// soakLoad writes the mix until stopped, and counts what committed.
type soakLoad struct {
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	mu        sync.Mutex
	committed map[string]int // transactions by kind
	failed    int            // transactions that returned an error
}

func (sk *soak) startLoad() *soakLoad {
	ctx, cancel := context.WithCancel(context.Background())
	ld := &soakLoad{cancel: cancel, committed: map[string]int{}}
	for li, l := range sk.lanes {
		for c := range loadConns {
			// A stream of its own per connection: the mix replays.
			rng := rand.New(rand.NewPCG(sk.cfg.seed, uint64(100+li*loadConns+c)))
			ld.wg.Go(func() { ld.write(ctx, l, c, rng) })
		}
	}
	sk.t.Cleanup(ld.stop)
	return ld
}

func (ld *soakLoad) stop() {
	ld.cancel()
	ld.wg.Wait()
}

// write is one connection's loop. An error (PostgreSQL may be
// restarting) only counts: the table says what committed.
func (ld *soakLoad) write(ctx context.Context, l *lane, c int, rng *rand.Rand) {
	paced(ctx, time.Second/loadRate, func(i int) {
		kind := drawKind(rng, l.ordered)
		key := fmt.Sprintf("%s-%d-%d", l.name, c, rng.IntN(loadKeys))
		rows := 1 + rng.IntN(3)
		p := map[string]any{"lane": l.name, "conn": c, "i": i, "kind": kind, "v": 1}
		err := pgx.BeginFunc(ctx, l.d.pool, func(tx pgx.Tx) error { return writeTx(ctx, tx, kind, key, rows, p) })
		ld.mu.Lock()
		if err == nil {
			ld.committed[kind]++
		} else if ctx.Err() == nil {
			ld.failed++
		}
		ld.mu.Unlock()
	})
}

// drawKind draws a transaction kind from txMix; ordered ones only on an
// ordered table.
func drawKind(rng *rand.Rand, ordered bool) string {
	total := 0
	for _, m := range txMix {
		if ordered || m.kind != "ordered" {
			total += m.weight
		}
	}
	x := rng.IntN(total)
	for _, m := range txMix {
		if !ordered && m.kind == "ordered" {
			continue
		}
		if x -= m.weight; x < 0 {
			return m.kind
		}
	}
	panic("unreachable")
}

// writeTx is the body of one transaction of kind: rows rows of key when
// ordered, else one row without a key, then the kind's follow-up.
func writeTx(ctx context.Context, tx pgx.Tx, kind, key string, rows int, p map[string]any) error {
	var entity *string
	if kind == "ordered" {
		entity = &key
	} else {
		rows = 1
	}
	attempts := 0
	switch kind {
	case "retry":
		attempts = 3
		p["a0"] = attempts
	case "flaky":
		p["flaky"] = 2
	}
	for n := range rows {
		p["n"] = n
		var id string
		if err := tx.QueryRow(ctx, insertSQL, "soak."+kind, p, entity, attempts).Scan(&id); err != nil {
			return err
		}
		if sql, ok := followSQL[kind]; ok {
			if _, err := tx.Exec(ctx, sql, id); err != nil {
				return err
			}
		}
	}
	return nil
}

// counts is what committed, by kind, and how many transactions failed.
func (ld *soakLoad) counts() (map[string]int, int) {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	return maps.Clone(ld.committed), ld.failed
}
