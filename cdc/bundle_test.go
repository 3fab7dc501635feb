package cdc

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// The package's test kit: a database with the outbox table and a Config
// of its own for each test (bundle), and a Deliverer that records what the
// stream hands it (recorder).

var table = store.Table{Schema: "public", Name: "portal_event_outbox"}

// recorder is a Deliverer that records the ids it is given. While gate is
// set, calls wait for it to close.
type recorder struct {
	mu      sync.Mutex
	seen    map[string]int
	rows    map[string]store.Insert // the last of each id
	batches [][]string
	gate    chan struct{}
	entered chan struct{} // gets a value when a call starts waiting at gate
	// missing, when set, decides which ids a call reports not found.
	missing func(call int, id string) bool
}

func newRecorder() *recorder {
	return &recorder{seen: map[string]int{}, rows: map[string]store.Insert{}, entered: make(chan struct{}, 1)}
}

func (r *recorder) DeliverInserts(ctx context.Context, ins []store.Insert) ([]string, error) {
	ids := make([]string, len(ins))
	for i, in := range ins {
		ids[i] = in.Row.ID
	}
	r.mu.Lock()
	gate := r.gate
	r.mu.Unlock()
	if gate != nil {
		select {
		case r.entered <- struct{}{}:
		default:
		}
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, in := range ins {
		r.rows[in.Row.ID] = in
	}
	call := len(r.batches)
	r.batches = append(r.batches, ids)
	var missing []string
	for _, id := range ids {
		if r.missing != nil && r.missing(call, id) {
			missing = append(missing, id)
			continue
		}
		r.seen[id]++
	}
	return missing, nil
}

func (r *recorder) has(ids ...string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range ids {
		if r.seen[id] == 0 {
			return false
		}
	}
	return true
}

func (r *recorder) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[id]
}

// bundle is one test's database, outbox table and configuration.
type bundle struct {
	url  string
	pool *pgxpool.Pool
	cfg  Config
	logs *relaytest.Buffer
	// tweak, when set, changes a Stream before start runs it.
	tweak func(*Stream)
}

var slotSeq atomic.Int64

// setup makes a fresh database with the outbox table, and a Config with a
// slot and publication name no other test uses.
func setup(t testing.TB) *bundle {
	t.Helper()
	return setupURL(t, pgtest.NewDB(t))
}

func setupURL(t testing.TB, url string) *bundle {
	t.Helper()
	ctx := context.Background()
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	// pgtest turns synchronous_commit off for speed; then a commit reaches
	// the walsender only when the WAL writer flushes it (up to 200 ms
	// later). Applications commit synchronously.
	pcfg.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := store.Migrate(ctx, pool, store.DefaultSchema(table), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE other (id bigserial PRIMARY KEY, body text)`); err != nil {
		t.Fatal(err)
	}
	n := slotSeq.Add(1)
	b := &bundle{
		url:  url,
		pool: pool,
		logs: &relaytest.Buffer{},
		cfg: Config{
			DatabaseURL: url,
			Schema:      table.Schema, Table: table.Name,
			Slot:        fmt.Sprintf("cdc_test_%d_%d", time.Now().UnixNano()%1e6, n),
			Publication: "outbox_relay",
			BatchSize:   100,
		},
	}
	// The slot pins its database: drop it before the database goes.
	// Registered before any stream, this runs after they stopped.
	t.Cleanup(func() { b.dropSlot(t) })
	return b
}

// start runs a Stream until the end of the test.
func (b *bundle) start(t testing.TB, d Deliverer) (*Stream, context.CancelFunc) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(multiWriter{t.Output(), b.logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := New(b.cfg, d, log)
	if b.tweak != nil {
		b.tweak(s)
	}
	return s, background(t, "Run", s.Run)
}

// background calls run in a goroutine until stop is called or the test
// ends, and fails the test on the error run returns.
func background(t testing.TB, what string, run func(context.Context) error) (stop context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", what, err)
		}
	})
	t.Cleanup(stop)
	return stop
}

type multiWriter []interface{ Write([]byte) (int, error) }

func (m multiWriter) Write(p []byte) (int, error) {
	for _, w := range m {
		_, _ = w.Write(p)
	}
	return len(p), nil
}

// dropSlot drops the test's slot, ending a walsender that still holds it.
func (b *bundle) dropSlot(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := store.DropSlot(ctx, b.pool, b.cfg.Slot); err != nil {
		t.Error(err)
	}
}

// insert commits one outbox row per call and returns its id.
func (b *bundle) insert(t testing.TB) string {
	t.Helper()
	var id string
	if err := b.pool.QueryRow(context.Background(),
		`INSERT INTO portal_event_outbox (event_type) VALUES ('test.event') RETURNING id::text`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

func waitStreaming(t testing.TB, s *Stream) {
	t.Helper()
	pgtest.WaitFor(t, 20*time.Second, "the stream to hold the slot", s.Streaming)
}

// streaming runs a Stream that hands rows to a new recorder until the end
// of the test, and waits until it holds the slot.
func (b *bundle) streaming(t testing.TB) (*recorder, *Stream) {
	t.Helper()
	rec := newRecorder()
	s, _ := b.start(t, rec)
	waitStreaming(t, s)
	return rec, s
}

// streamingAt sets up the outbox at url and a stream that has delivered a
// first row, for tests that then break the server or its objects.
func streamingAt(t *testing.T, url string) (*bundle, *recorder, *Stream) {
	t.Helper()
	b := setupURL(t, url)
	rec, s := b.streaming(t)
	first := b.insert(t)
	pgtest.WaitFor(t, 5*time.Second, "a first row", func() bool { return rec.has(first) })
	return b, rec, s
}

// exec runs statements on the bundle's pool, failing the test on an error.
func (b *bundle) exec(t *testing.T, statements ...string) {
	t.Helper()
	for _, sql := range statements {
		if _, err := b.pool.Exec(context.Background(), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
}

// role creates a login role for the test, named prefix and the test's
// slot, with attributes (such as REPLICATION) and password. It returns the
// role's name and the test database's URL as that role; the role and what
// it owns go when the test ends.
func (b *bundle) role(t *testing.T, prefix, attributes, password string) (name, url string) {
	t.Helper()
	name = prefix + "_" + b.cfg.Slot
	if _, err := b.pool.Exec(context.Background(), fmt.Sprintf(`CREATE ROLE %s LOGIN %s PASSWORD '%s'`, name, attributes, password)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = b.pool.Exec(context.Background(), `DROP OWNED BY `+name)
		_, _ = b.pool.Exec(context.Background(), `DROP ROLE `+name)
	})
	cfg := b.pool.Config().ConnConfig
	return name, fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", name, password, cfg.Host, cfg.Port, cfg.Database)
}

// loggedOnce checks that the stream's logs say msg once: a change of the
// stream's state is logged once, its retries are not.
func (b *bundle) loggedOnce(t *testing.T, msg string) {
	t.Helper()
	if n := strings.Count(b.logs.String(), msg); n != 1 {
		t.Errorf("logged %q %d times, want once", msg, n)
	}
}
