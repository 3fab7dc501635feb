package cdc

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/internal/store"
	"github.com/outbox-relay/outbox-relay/relay"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

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
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return s, stop
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

func TestInsertsReachDelivererQuickly(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rec, s := b.streaming(t)

	var worst time.Duration
	for range 20 {
		start := time.Now()
		id := b.insert(t)
		pgtest.WaitFor(t, 2*time.Second, fmt.Sprintf("id %s", id), func() bool { return rec.has(id) })
		worst = max(worst, time.Since(start))
	}
	t.Logf("worst insert-to-DeliverIDs latency of 20: %s", worst)
	if worst > 500*time.Millisecond {
		t.Errorf("an insert took %s to reach the deliverer", worst)
	}
	if st := s.State(); st.Role != RoleStreamer || !st.Connected || st.LastError != "" || st.ConfirmedLSN == "" {
		t.Errorf("State() = %+v, want a connected streamer with a confirmed LSN", st)
	}
}

func TestRolledBackTransactionDeliversNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rec, _ := b.streaming(t)

	ctx := context.Background()
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var rolledBack string
	if err := tx.QueryRow(ctx, `INSERT INTO portal_event_outbox (event_type) VALUES ('x') RETURNING id::text`).Scan(&rolledBack); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// The stream is ordered: once a later commit arrived, the rolled-back
	// row would have come before it.
	marker := b.insert(t)
	pgtest.WaitFor(t, 5*time.Second, "the marker row", func() bool { return rec.has(marker) })
	if rec.count(rolledBack) != 0 {
		t.Errorf("rolled-back id %s was handed to the deliverer", rolledBack)
	}
}

func TestMultiRowTransactionDeliversAll(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rec, _ := b.streaming(t)

	rows, err := b.pool.Query(context.Background(),
		`INSERT INTO portal_event_outbox (event_type) SELECT 'bulk' FROM generate_series(1, 250) RETURNING id::text`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, 5*time.Second, "all 250 ids", func() bool { return rec.has(ids...) })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, batch := range rec.batches {
		if len(batch) > b.cfg.BatchSize {
			t.Errorf("a batch of %d ids, more than BatchSize %d", len(batch), b.cfg.BatchSize)
		}
	}
	for _, id := range ids {
		if rec.seen[id] != 1 {
			t.Errorf("id %s handed off %d times", id, rec.seen[id])
		}
	}
}

func TestSlotDroppedExternallyIsRecreated(t *testing.T) {
	t.Parallel()
	b, rec, s := streamingAt(t, pgtest.NewDB(t))

	// As an operator (or the slot guard) would: stop the walsender, then
	// drop the slot before the relay takes it again.
	ctx := context.Background()
	if err := store.DropSlot(ctx, b.pool, b.cfg.Slot); err != nil {
		t.Fatal(err)
	}

	pgtest.WaitFor(t, 15*time.Second, "the slot to be recreated and streamed from", func() bool {
		slot, err := store.SlotInfo(ctx, b.pool, b.cfg.Slot)
		return err == nil && slot.Active && s.Streaming()
	})
	second := b.insert(t)
	pgtest.WaitFor(t, 5*time.Second, "a row after recovery", func() bool { return rec.has(second) })
	if n := strings.Count(b.logs.String(), "replication stream down"); n != 1 {
		t.Errorf("logged the outage %d times, want once", n)
	}
}

func TestPostgresRestartIsSurvived(t *testing.T) {
	t.Parallel()
	c := pgtest.StartT(t)
	b, rec, s := streamingAt(t, c.URL("postgres"))

	if err := c.Restart("immediate"); err != nil {
		t.Fatal(err)
	}
	// Inserted at once, most likely before the stream is back: the slot
	// keeps it for the stream.
	var after string
	pgtest.WaitFor(t, 10*time.Second, "an insert after the restart", func() bool {
		err := b.pool.QueryRow(context.Background(),
			`INSERT INTO portal_event_outbox (event_type) VALUES ('after') RETURNING id::text`).Scan(&after)
		return err == nil
	})
	pgtest.WaitFor(t, 15*time.Second, "the row inserted after the restart", func() bool { return rec.has(after) })
	if !s.Streaming() {
		t.Error("not streaming after the restart")
	}
}

func TestTwoStreamsOneSlot(t *testing.T) {
	t.Parallel()
	b := setup(t)
	recA, recB := newRecorder(), newRecorder()
	a, stopA := b.start(t, recA)
	waitStreaming(t, a)
	sb, _ := b.start(t, recB)
	pgtest.WaitFor(t, 10*time.Second, "the second stream to stand by", func() bool { return sb.State().Role == RoleStandby })
	if sb.Streaming() {
		t.Fatal("both streams claim the slot")
	}
	id := b.insert(t)
	pgtest.WaitFor(t, 5*time.Second, "the streamer to get a row", func() bool { return recA.has(id) })
	if recB.count(id) != 0 {
		t.Error("the standby got a row")
	}

	stopA()
	pgtest.WaitFor(t, 15*time.Second, "the standby to take over", sb.Streaming)
	later := b.insert(t)
	pgtest.WaitFor(t, 5*time.Second, "the new streamer to get a row", func() bool { return recB.has(later) })
	if n := strings.Count(b.logs.String(), "standing by"); n != 1 {
		t.Errorf("logged standing by %d times, want once", n)
	}
}

// walLag reads the slot's lag behind the current WAL position.
func walLag(t *testing.T, pool *pgxpool.Pool, slot string) (flushLag, retained int64) {
	t.Helper()
	err := pool.QueryRow(context.Background(), `SELECT
	coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), -1)::bigint,
	coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), -1)::bigint
FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&flushLag, &retained)
	if err != nil {
		t.Fatal(err)
	}
	return flushLag, retained
}

func TestSlotDoesNotPinWAL(t *testing.T) {
	t.Parallel()
	for _, blocked := range []bool{false, true} {
		name := "idle"
		if blocked {
			name = "deliverer blocked"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			if blocked {
				// A buffer this small fills with the flood below, as
				// the real one fills under a deliverer that stays behind.
				b.tweak = func(s *Stream) { s.handoffIDs = 400 }
			}
			rec, s := b.streaming(t)
			if blocked {
				gate := make(chan struct{})
				rec.mu.Lock()
				rec.gate = gate
				rec.mu.Unlock()
				t.Cleanup(func() { close(gate) })
				b.insert(t)
				select {
				case <-rec.entered:
				case <-time.After(5 * time.Second):
					t.Fatal("the deliverer was not called")
				}
			}
			const mb = 1 << 20
			ctx := context.Background()
			// ~50 MB of WAL for a table outside the publication, in
			// chunks; the slot must follow after each.
			for range 10 {
				if _, err := b.pool.Exec(ctx, `INSERT INTO other (body) SELECT repeat(md5(g::text), 30) FROM generate_series(1, 5000) g`); err != nil {
					t.Fatal(err)
				}
				if blocked {
					// More outbox rows than the hand-off buffer holds, one
					// transaction each: with the deliverer stuck they must
					// be left to the sweeper at once, not slow the reader
					// down or stop it confirming.
					outbox := pgx.Identifier{b.cfg.Schema, b.cfg.Table}.Sanitize()
					for range 300 {
						if _, err := b.pool.Exec(ctx, `INSERT INTO `+outbox+` (event_type) VALUES ('flood')`); err != nil {
							t.Fatal(err)
						}
					}
				}
				pgtest.WaitFor(t, 10*time.Second, "confirmed_flush_lsn to follow", func() bool {
					lag, _ := walLag(t, b.pool, b.cfg.Slot)
					return lag >= 0 && lag < 4*mb
				})
			}
			// restart_lsn moves at running-transactions records, which a
			// checkpoint writes.
			pgtest.WaitFor(t, 20*time.Second, "retained WAL to shrink after a checkpoint", func() bool {
				if _, err := b.pool.Exec(ctx, `CHECKPOINT`); err != nil {
					t.Fatal(err)
				}
				_, retained := walLag(t, b.pool, b.cfg.Slot)
				return retained >= 0 && retained < 4*mb
			})
			lag, retained := walLag(t, b.pool, b.cfg.Slot)
			t.Logf("after ~50 MB of other WAL: flush lag %d kB, retained %d kB", lag/1024, retained/1024)
			if blocked {
				select {
				case <-s.Dropped():
				default:
					t.Error("ids were left to the sweeper without nudging it")
				}
			}
		})
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	t.Run("logical", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		if err := Check(context.Background(), b.cfg); err != nil {
			t.Errorf("Check on a wal_level=logical server: %v", err)
		}
	})
	t.Run("wal_level replica", func(t *testing.T) {
		t.Parallel()
		c := pgtest.StartT(t, pgtest.WithWalLevel("replica"))
		cfg := Config{DatabaseURL: c.URL("postgres"), Schema: "public", Table: "t", Slot: "s", Publication: "p"}
		err := Check(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), "wal_level: replica") {
			t.Fatalf("Check = %v, want a wal_level reason", err)
		}
		if strings.Contains(err.Error(), c.Password()) {
			t.Errorf("the reason holds the password: %v", err)
		}
		t.Logf("reason: %v", err)
	})
	t.Run("role without REPLICATION", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		ctx := context.Background()
		role := "norepl_" + b.cfg.Slot
		if _, err := b.pool.Exec(ctx, fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD 'secret-pw-123'`, role)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = b.pool.Exec(context.Background(), `DROP ROLE `+role) })
		cfg := b.cfg
		cfg.DatabaseURL = withUser(t, b.url, role, "secret-pw-123")
		err := Check(ctx, cfg)
		if err == nil || !strings.Contains(err.Error(), "REPLICATION") {
			t.Fatalf("Check = %v, want a REPLICATION reason", err)
		}
		if strings.Contains(err.Error(), "secret-pw-123") {
			t.Errorf("the reason holds the password: %v", err)
		}
	})
	t.Run("publication missing and not the owner", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		ctx := context.Background()
		role := "notowner_" + b.cfg.Slot
		if _, err := b.pool.Exec(ctx, fmt.Sprintf(`CREATE ROLE %s LOGIN REPLICATION PASSWORD 'pw-456'`, role)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = b.pool.Exec(context.Background(), `DROP ROLE `+role) })
		cfg := b.cfg
		cfg.DatabaseURL = withUser(t, b.url, role, "pw-456")
		err := Check(ctx, cfg)
		if err == nil || !strings.Contains(err.Error(), "may not create it") {
			t.Fatalf("Check = %v, want a reason about the publication", err)
		}
		t.Logf("reason: %v", err)
	})
	t.Run("unreachable", func(t *testing.T) {
		t.Parallel()
		cfg := Config{DatabaseURL: "postgres://u:topsecret@127.0.0.1:1/db?connect_timeout=2", Slot: "s"}
		err := Check(context.Background(), cfg)
		if err == nil || strings.Contains(err.Error(), "topsecret") {
			t.Fatalf("Check = %v, want an error without the password", err)
		}
	})
}

func withUser(t *testing.T, url, user, password string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", user, password, cfg.Host, cfg.Port, cfg.Database)
}

func TestRunStopsOnCancel(t *testing.T) {
	t.Parallel()
	// A database that does not answer: Run must still return at once.
	s := New(Config{DatabaseURL: "postgres://u:p@127.0.0.1:1/db", Slot: "s", Publication: "p"}, newRecorder(), slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	pgtest.WaitFor(t, 5*time.Second, "the stream to report down", func() bool {
		st := s.State()
		return st.LastError != "" && !strings.Contains(st.LastError, ":p@")
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil on cancel", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if st := s.State(); st.Role != RoleDown {
		t.Errorf("State() = %+v, want down", st)
	}
}

func TestPublicationDroppedIsRecreated(t *testing.T) {
	t.Parallel()
	b, rec, _ := streamingAt(t, pgtest.NewDB(t))

	b.exec(t, `DROP PUBLICATION `+b.cfg.Publication)
	// Rows inserted before the stream is back are the sweeper's; the
	// stream must come back for the rows after. Insert now and then until
	// one comes through.
	var ids []string
	var last time.Time
	pgtest.WaitFor(t, 20*time.Second, "a row after the publication came back", func() bool {
		if time.Since(last) > 50*time.Millisecond {
			ids, last = append(ids, b.insert(t)), time.Now()
		}
		for _, id := range ids {
			if rec.has(id) {
				return true
			}
		}
		return false
	})
	if n := strings.Count(b.logs.String(), "lost its publication"); n != 1 {
		t.Errorf("logged the slot's recreation %d times, want once", n)
	}
}

func TestReadOnlyServerIsWaitedFor(t *testing.T) {
	t.Parallel()
	c := pgtest.StartT(t)
	b := setupURL(t, c.URL("postgres"))
	// Restart the server as a standby without a primary: read-only, in
	// recovery, as a failed-over address can be for a while.
	if err := c.StopServer("fast"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.Dir(), "data", "standby.signal"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.StartServer(); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	s, _ := b.start(t, rec)
	pgtest.WaitFor(t, 10*time.Second, "the stream to see recovery", func() bool {
		return strings.Contains(s.State().LastError, "recovery")
	})
	// The pool's connections died with the restart: retry until a fresh
	// one promotes.
	pgtest.WaitFor(t, 10*time.Second, "the promotion", func() bool {
		_, err := b.pool.Exec(context.Background(), `SELECT pg_promote()`)
		return err == nil
	})
	waitStreaming(t, s)
	id := b.insert(t)
	pgtest.WaitFor(t, 5*time.Second, "a row after the promotion", func() bool { return rec.has(id) })
	if n := strings.Count(b.logs.String(), "in recovery"); n != 1 {
		t.Errorf("said the server is in recovery %d times, want once", n)
	}
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

// Ids the stream drops are the sweeper's: the stream nudges it to sweep
// with its usual grace, and neither wakes it to take fresh rows nor stops
// counting as streaming, so the sweep does not claim beside a stream that
// is behind.
func TestDroppedIDsNudgeTheSweeper(t *testing.T) {
	s := New(decideCfg, nil, slog.New(slog.DiscardHandler))
	s.streaming.Store(true)
	s.shed(false, 3)
	select {
	case <-s.Dropped():
		t.Fatal("nudged by a hand-off that was taken")
	default:
	}
	s.shed(true, 3)
	select {
	case <-s.Dropped():
	default:
		t.Fatal("dropped ids did not nudge the sweeper")
	}
	select {
	case <-s.Wake():
		t.Error("a drop woke the sweeper to take fresh rows")
	default:
	}
	if !s.Streaming() {
		t.Error("not streaming after a drop: the sweep would claim fresh rows beside the stream")
	}
}

// TestEndToEnd runs the stream with the real Deliverer and a real runner,
// and no sweeper: a row reaches the runner only through the stream.
func TestEndToEnd(t *testing.T) {
	t.Parallel()
	b := setup(t)
	runner := relaytest.NewRunner(t)
	d := relay.New(relay.Config{
		RunnerURL:     runner.URL(),
		HTTPTimeout:   5 * time.Second,
		Concurrency:   4,
		MaxAttempts:   5,
		Backoff:       relay.Backoff{Base: time.Second, Max: time.Minute},
		ShutdownGrace: time.Second,
	}, store.New(b.pool, store.DefaultSchema(table)), slog.New(slog.DiscardHandler), nil)
	dctx, stopD := context.WithCancel(context.Background())
	dDone := make(chan error, 1)
	go func() { dDone <- d.Run(dctx) }()
	// Registered first, so it runs after the stream has stopped: the
	// Deliverer outlives its claimers, as in cmd.
	t.Cleanup(func() {
		stopD()
		if err := <-dDone; err != nil {
			t.Errorf("Deliverer.Run: %v", err)
		}
	})

	s, _ := b.start(t, d)
	waitStreaming(t, s)

	ctx := context.Background()
	for range 5 {
		var eventID string
		start := time.Now()
		if err := b.pool.QueryRow(ctx, `INSERT INTO portal_event_outbox (event_type, payload)
			VALUES ('file.finalized', '{"n": 1}') RETURNING event_id::text`).Scan(&eventID); err != nil {
			t.Fatal(err)
		}
		var took time.Duration
		pgtest.WaitFor(t, 5*time.Second, "the runner to get "+eventID, func() bool {
			at, ok := runner.FirstReceipts()[eventID]
			took = at.Sub(start)
			return ok
		})
		t.Logf("insert to runner: %s", took)
		if took > time.Second {
			t.Errorf("event %s took %s to reach the runner", eventID, took)
		}
		var status string
		pgtest.WaitFor(t, 5*time.Second, "the row to be marked delivered", func() bool {
			err := b.pool.QueryRow(ctx, `SELECT status FROM portal_event_outbox WHERE event_id = $1`, eventID).Scan(&status)
			return err == nil && status == store.StatusDelivered
		})
	}
}
