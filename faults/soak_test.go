package faults

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// The soak: a random mix of application transactions on three outbox
// tables while faults strike at random moments, then a drain and a check
// of every promise from outside (soak_check_test.go). SOAK_SEED picks the
// mix and the fault plan, so a run can be replayed; SOAK_DURATION is how
// long the load runs (short by default, so that `make test` runs it;
// `make soak` runs it for minutes).
//
// The tables, each in its own database with its own relays and slot:
//   - soak_plain: no ordering key, so the stream sends fresh rows from
//     the WAL: the path where a transaction's later UPDATE or DELETE of
//     its own row matters;
//   - soak_int: ordered per key (ordering_key=entity), bigserial ids;
//   - soak_uuid: ordered per key, uuid ids, and a seq bigserial column
//     that gives the key's row order the check uses.
func TestSoak(t *testing.T) {
	cfg := soakSettings(t)
	t.Logf("soak: SOAK_SEED=%d SOAK_DURATION=%s", cfg.seed, cfg.duration)
	sk := newSoak(t, cfg)
	plan := planFaults(cfg.seed, cfg.duration)
	t.Logf("soak plan: %s", describePlan(plan))
	load := sk.startLoad()
	sk.run(plan)
	load.stop()
	sk.calm()
	drained := sk.drain(drainLimit)
	sk.judge(load, drained)
}

// soakConfig is what SOAK_SEED and SOAK_DURATION say.
type soakConfig struct {
	seed     uint64
	duration time.Duration
}

// Defaults of a soak run; drainLimit bounds the wait for the last rows,
// which covers a lease left by a killed relay.
const (
	soakDefaultDuration = 30 * time.Second
	soakMinDuration     = 10 * time.Second
	drainLimit          = 3 * time.Minute
)

// soakSettings reads SOAK_SEED (default: the clock) and SOAK_DURATION.
func soakSettings(t *testing.T) soakConfig {
	c := soakConfig{seed: uint64(time.Now().UnixNano()), duration: soakDefaultDuration}
	if v := os.Getenv("SOAK_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("SOAK_SEED: %q is not an unsigned integer", v)
		}
		c.seed = n
	}
	if v := os.Getenv("SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < soakMinDuration {
			t.Fatalf("SOAK_DURATION: %q is not a duration of at least %s", v, soakMinDuration)
		}
		c.duration = d
	}
	return c
}

// uuidColumns maps the uuid table's roles: its uuid id cannot order a
// key's rows, so seq (a bigserial) does, for the relay and the check alike.
const uuidColumns = "id=event_id,ordering_key=entity,sequence=seq"

// lane is one outbox table with its relays.
type lane struct {
	name    string // its database and its slot
	ordered bool
	order   string // the column of a key's row order, for the check
	d       *db
	env     []string
	main    *relayProc
	replica *relayProc // nil unless a second replica runs
}

// relayProc is a relay process and its number at the runner (senders).
type relayProc struct {
	p *relaytest.Process
	n int
}

// soak is one run: its PostgreSQL, its runner, its tables and what
// happened to them.
type soak struct {
	t       *testing.T
	cfg     soakConfig
	pg      *pgtest.Cluster
	rn      *relaytest.Runner
	senders *senders
	j       *journal
	lanes   []*lane
	faults  faultLog
	start   time.Time

	runnerDown bool      // the runner refuses connections
	runnerFrom time.Time // start of the runner's fault; zero when none
}

func newSoak(t *testing.T, cfg soakConfig) *soak {
	// synchronous_commit on: a crash of PostgreSQL loses no acknowledged
	// outcome, so it leaves no duplicate behind (see postgresRestarted).
	pg := pgtest.StartT(t, pgtest.WithSetting("synchronous_commit", "on"))
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	sk := &soak{t: t, cfg: cfg, pg: pg, rn: relaytest.NewRunner(t)}
	sk.j = newJournal(t, "whsec_"+base64.StdEncoding.EncodeToString(secret), cfg.seed)
	sk.senders = newSenders(sk.rn, sk.j.answer)
	sk.lanes = []*lane{
		sk.addLane("soak_plain", "", "id", `ALTER TABLE portal_event_outbox ADD COLUMN IF NOT EXISTS entity text`),
		sk.addLane("soak_int", "ordering_key=entity", "id", ""),
		sk.addLane("soak_uuid", uuidColumns, "seq", `ALTER TABLE portal_event_outbox ADD COLUMN IF NOT EXISTS seq bigserial`),
	}
	for _, l := range sk.lanes {
		l.env = append(l.env, "RELAY_RUNNER_SECRET="+sk.j.secret)
		l.main = sk.startRelay(l)
	}
	sk.start = time.Now()
	return sk
}

// addLane creates the lane's database and table (migrate's, then ddl),
// and the environment of its relays.
func (sk *soak) addLane(name, columns, order, ddl string) *lane {
	t := sk.t
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, sk.pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = admin.Exec(ctx, "CREATE DATABASE "+name)
	admin.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cols, err := store.ParseColumns(columns)
	if err != nil {
		t.Fatal(err)
	}
	d := newDBWith(t, sk.pg.URL(name), store.Planned(relaytest.Table, cols, store.DefaultStatuses()))
	if ddl != "" {
		if _, err := d.pool.Exec(ctx, ddl); err != nil {
			t.Fatal(err)
		}
	}
	env := relayEnv(d, sk.rn, "RELAY_SLOT_NAME="+name, "RELAY_COLUMNS="+columns,
		// Slow answers stay well inside the timeout: a timed-out request
		// the runner accepted would be a duplicate no kill explains.
		"RELAY_HTTP_TIMEOUT=5s", "RELAY_MAX_ATTEMPTS=1000", "RELAY_RUNNER_PROBE_MAX=2s")
	return &lane{name: name, ordered: cols.Has(store.RoleOrderingKey), order: order, d: d, env: env}
}

// startRelay starts a relay of l, tagged for the runner, with extra
// settings over the lane's.
func (sk *soak) startRelay(l *lane, extra ...string) *relayProc {
	tag, n := sk.senders.tag()
	env := append(slices.Concat(l.env, extra), tag)
	rp := &relayProc{p: startRelay(sk.t, env), n: n}
	sk.t.Logf("soak: relay %d (pid %d) runs on %s %v", n, rp.p.Pid(), l.name, extra)
	return rp
}

// since is the time from the start of the run, for the log.
func (sk *soak) since() time.Duration { return time.Since(sk.start).Round(10 * time.Millisecond) }

// judge runs every check, fails the test on each violation with a few
// examples, and logs the result line with the seed that replays the run.
func (sk *soak) judge(ld *soakLoad, drained bool) {
	t := sk.t
	ev := sk.evidence()
	dups, unexplained := ev.duplicates()
	deleted, early, unknown := ev.forbidden()
	checked, wrongAttempts := ev.attempts()
	checks := []struct {
		name  string
		found []string
	}{
		{"lost", ev.lost()},
		{"unexplained_duplicates", unexplained},
		{"order_violations", relaytest.OrderViolations(ev.keyed, ev.firsts)},
		{"stale_payloads", ev.stale()},
		{"deleted_but_sent", deleted},
		{"early_sends", early},
		{"never_committed_but_sent", unknown},
		{"attempts_wrong", wrongAttempts},
	}
	line := fmt.Sprintf("soak result: SOAK_SEED=%d SOAK_DURATION=%s events=%d duplicates=%d", sk.cfg.seed, sk.cfg.duration, len(ev.rows), dups)
	extra := map[string]string{"seed": strconv.FormatUint(sk.cfg.seed, 10), "duration": sk.cfg.duration.String()}
	for _, c := range checks {
		line += fmt.Sprintf(" %s=%d", c.name, len(c.found))
		extra[c.name] = strconv.Itoa(len(c.found))
		if len(c.found) > 0 {
			t.Errorf("soak: %s: %d; first: %s", c.name, len(c.found), firstFew(c.found, 3))
		}
	}
	bad := sk.j.badSignatures()
	if bad > 0 {
		t.Errorf("soak: %d requests failed the Standard Webhooks signature check", bad)
	}
	t.Logf("%s bad_signatures=%d attempts_checked=%d drained=%v", line, bad, checked, drained)
	sk.checkLoad(ld)
	order := len(checks[2].found)
	record(t, "soak", result{Events: len(ev.rows), Lost: len(checks[0].found), Duplicates: dups, OrderViolations: &order}, extra)
	t.Logf("replay: SOAK_SEED=%d SOAK_DURATION=%s make soak", sk.cfg.seed, sk.cfg.duration)
}

// checkLoad fails the run when a kind of transaction never committed, or
// no fault was carried out: the checks would then pass on what was never
// tried.
func (sk *soak) checkLoad(ld *soakLoad) {
	committed, failed := ld.counts()
	for _, m := range txMix {
		if committed[m.kind] == 0 {
			sk.t.Errorf("soak: no %s transaction committed: the run did not try it", m.kind)
		}
	}
	if len(sk.faults.counts) == 0 {
		sk.t.Error("soak: no fault was carried out")
	}
	sk.t.Logf("soak load: committed %v, %d transactions failed; faults %v", committed, failed, sk.faults.counts)
}
