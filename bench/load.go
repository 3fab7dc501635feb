package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// insertOne is a single-row transaction as an application writes it. The
// event_id is made here so the harness knows it without RETURNING.
const insertOne = `INSERT INTO ` + table + ` (event_id, event_type, payload) VALUES ($1, 'bench.event', $2)`

// insertKeyed is insertOne with an ordering key, $3 (ordering measure).
const insertKeyed = `INSERT INTO ` + table + ` (event_id, event_type, payload, entity) VALUES ($1, 'bench.event', $2, $3)`

// insertEvent inserts event id with key, or without one when key is "".
func insertEvent(ctx context.Context, conn *pgxpool.Conn, id string, n int, key string) error {
	var err error
	if key == "" {
		_, err = conn.Exec(ctx, insertOne, id, payload(n))
	} else {
		_, err = conn.Exec(ctx, insertKeyed, id, payload(n), key)
	}
	return err
}

// insertBulk is one INSERT … SELECT of $1 rows in one transaction; event
// ids come from the column default.
const insertBulk = `INSERT INTO ` + table + ` (event_type, payload)
SELECT 'bench.bulk', jsonb_build_object('n', g, 'bucket', 'bench', 'key', 'uploads/bench/' || g || '.bin', 'size', 1048576)
FROM generate_series(1, $1::int) g`

// newUUID is a random (version 4) UUID.
func newUUID() string {
	var u [16]byte
	_, _ = rand.Read(u[:])
	u[6], u[8] = u[6]&0x0f|0x40, u[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:])
}

// payload is a small event body, about 80 bytes, like the same shape the
// bulk insert builds.
func payload(n int) []byte {
	b := make([]byte, 0, 96)
	b = append(b, `{"n": `...)
	b = strconv.AppendInt(b, int64(n), 10)
	b = append(b, `, "key": "uploads/bench/`...)
	b = strconv.AppendInt(b, int64(n), 10)
	b = append(b, `.bin", "size": 1048576, "bucket": "bench"}`...)
	return b
}

// sent is one committed event: its id and when COMMIT returned.
type sent struct {
	id string
	at int64
}

// loadStats describes how a load went.
type loadStats struct {
	Planned      int     `json:"planned"`
	Committed    int     `json:"committed"`
	Errors       int     `json:"errors"`
	Seconds      float64 `json:"seconds"`
	AchievedRate float64 `json:"achieved_rate"`
	// MaxBehindMs is the longest any insert started after its slot in the
	// schedule: how well the load kept its pace.
	MaxBehindMs float64 `json:"max_behind_ms"`
	FirstError  string  `json:"first_error,omitempty"`
}

// loadErrors are a load's failed inserts, counted across its
// connections, with the first reason kept.
type loadErrors struct {
	n     atomic.Int64
	first atomic.Value
}

// acquire is a connection of the load's own, or nil with the reason kept.
func (e *loadErrors) acquire(ctx context.Context, pool *pgxpool.Pool) *pgxpool.Conn {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		e.first.CompareAndSwap(nil, err.Error())
		return nil
	}
	return conn
}

func (e *loadErrors) add(err error) {
	e.n.Add(1)
	e.first.CompareAndSwap(nil, err.Error())
}

// into copies the count and the first reason into st.
func (e *loadErrors) into(st *loadStats) {
	st.Errors = int(e.n.Load())
	if first, ok := e.first.Load().(string); ok {
		st.FirstError = first
	}
}

// paced commits single-row transactions at rate per second for d, spread
// over conns connections, each holding its own, every row with ordering
// key key ("" for none). Insert k of connection w is due at
// (k·conns + w)/rate: a late insert goes at once, so the load catches up
// rather than drifting. Every committed event is returned.
func paced(ctx context.Context, pool *pgxpool.Pool, rate, conns int, d time.Duration, key string) ([]sent, loadStats, error) {
	pc := &pacer{pool: pool, rate: rate, conns: conns, total: int(float64(rate) * d.Seconds()), start: time.Now()}
	if key != "" {
		pc.key = func(int, int) string { return key }
	}
	return runPacer(ctx, pc)
}

// pacedFor is paced for a rate the connections may not reach: it stops at
// d with the inserts still due left out, rather than catching up after d.
func pacedFor(ctx context.Context, pool *pgxpool.Pool, rate, conns int, d time.Duration) ([]sent, loadStats, error) {
	start := time.Now()
	return runPacer(ctx, &pacer{pool: pool, rate: rate, conns: conns, total: int(float64(rate) * d.Seconds()), start: start, until: start.Add(d)})
}

// flood commits n single-row transactions as fast as conns connections
// can, and returns when the last has committed, with every committed
// event. With keys > 0 the rows carry that many ordering keys, each
// written by one connection only (the ordering contract: no key in two
// concurrent transactions).
func flood(ctx context.Context, pool *pgxpool.Pool, n, conns, keys int) ([]sent, loadStats, error) {
	pc := &pacer{pool: pool, conns: conns, total: n, start: time.Now()}
	if keys > 0 {
		pc.key = func(w, j int) string { return "k" + strconv.Itoa(w+conns*(j%max(keys/conns, 1))) }
	}
	out, st, err := runPacer(ctx, pc)
	if err == nil && st.Committed < n {
		err = fmt.Errorf("only %d of %d inserts committed: %s", st.Committed, n, st.FirstError)
	}
	return out, st, err
}

// runPacer runs pc on its connections and gathers what they committed.
func runPacer(ctx context.Context, pc *pacer) ([]sent, loadStats, error) {
	st := loadStats{Planned: pc.total}
	logs := make([][]sent, pc.conns)
	var wg sync.WaitGroup
	for w := range pc.conns {
		wg.Go(func() { logs[w] = pc.run(ctx, w) })
	}
	wg.Wait()
	st.Seconds = time.Since(pc.start).Seconds()
	var out []sent
	for _, l := range logs {
		out = append(out, l...)
	}
	st.Committed = len(out)
	st.AchievedRate = float64(st.Committed) / st.Seconds
	st.MaxBehindMs = float64(pc.maxBehind.Load()) / 1e6
	pc.errs.into(&st)
	if err := ctx.Err(); err != nil {
		return nil, st, err
	}
	return out, st, nil
}

// pacer is one load of total single-row inserts over conns connections:
// insert i is due at i/rate after start, or, with rate 0, goes as soon as
// a connection is free.
type pacer struct {
	pool               *pgxpool.Pool
	rate, conns, total int
	start              time.Time
	key                func(w, j int) string // ordering key of connection w's j-th insert; nil: none
	until              time.Time             // no insert starts after it; zero: none
	next               atomic.Int64          // the next insert to take, with rate 0
	maxBehind          atomic.Int64
	errs               loadErrors
}

// run is connection w's share of the load, each insert at its time; it
// returns those that committed.
func (pc *pacer) run(ctx context.Context, w int) []sent {
	conn := pc.errs.acquire(ctx, pc.pool)
	if conn == nil {
		return nil
	}
	defer conn.Release()
	log := make([]sent, 0, pc.total/pc.conns+1)
	for j := 0; ; j++ {
		i := w + j*pc.conns
		if pc.rate == 0 { // every pass takes a fresh index, failed or not
			i = int(pc.next.Add(1)) - 1
		}
		if i >= pc.total || !pc.wait(ctx, i) {
			break
		}
		key, id := "", newUUID()
		if pc.key != nil {
			key = pc.key(w, j)
		}
		if err := insertEvent(ctx, conn, id, i, key); err != nil {
			if ctx.Err() != nil {
				break
			}
			pc.errs.add(err)
			continue
		}
		log = append(log, sent{id: id, at: now()})
	}
	return log
}

// wait waits for insert i's time; false when the load is to stop.
func (pc *pacer) wait(ctx context.Context, i int) bool {
	if pc.rate == 0 {
		return true
	}
	due := pc.start.Add(time.Duration(float64(i) / float64(pc.rate) * float64(time.Second)))
	if wait := time.Until(due); wait > 0 {
		if sleep(ctx, wait) != nil {
			return false
		}
	} else if behind := int64(-wait); behind > pc.maxBehind.Load() {
		pc.maxBehind.Store(behind)
	}
	return pc.until.IsZero() || time.Now().Before(pc.until)
}

// bulk inserts n rows in one INSERT … SELECT and returns when it committed.
func bulk(ctx context.Context, pool *pgxpool.Pool, n int) error {
	_, err := pool.Exec(ctx, insertBulk, n)
	return err
}
