package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
)

// sample is one event the demo inserts and the outcome it expects.
type sample struct {
	typ, file, owner string
	size             int64
	wantStatus       string
	wantAttempts     int
}

// samples: three ordinary events (with names in several scripts, to show
// the payload arrives byte for byte), one the runner refuses for good, and
// one it fails twice before accepting.
var samples = []sample{
	{"file.finalized", "Quarterly report Q3 2026.pdf", "Ada Lovelace", 482_113, "delivered", 1},
	{"file.finalized", "Überweisung März – Müller GmbH.xlsx", "Zoë Ångström", 31_744, "delivered", 1},
	{"file.finalized", "会議メモ 2026-11 📄.docx", "山田 太郎", 12_288, "delivered", 1},
	{"demo.rejected", "unreadable-scan.tiff", "Ada Lovelace", 9_830_400, "dead", 1},
	{"demo.flaky", "site-survey.zip", "Олег Петров", 73_400_320, "delivered", 3},
}

// event is an inserted sample with what the database gave it.
type event struct {
	sample
	id        int64
	eventID   string
	committed time.Time
}

// insertSamples does what the application does: its business write and the
// outbox INSERT in one transaction. Nothing else: no hook after the commit,
// no call to the relay.
func insertSamples(ctx context.Context, db *pgx.Conn, out *console) ([]event, error) {
	// pgtest turns synchronous_commit off for speed; an application runs
	// with it on, and with it off a commit reaches the replication stream
	// up to the WAL writer's delay late.
	if _, err := db.Exec(ctx, `SET synchronous_commit = on`); err != nil {
		return nil, err
	}
	if _, err := db.Exec(ctx, `CREATE TABLE demo_file (
		id bigserial PRIMARY KEY, name text NOT NULL, size_bytes bigint NOT NULL,
		finalized_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return nil, err
	}
	var events []event
	for _, s := range samples {
		e := event{sample: s}
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			var fileID int64
			if err := tx.QueryRow(ctx, `INSERT INTO demo_file (name, size_bytes) VALUES ($1, $2) RETURNING id`,
				s.file, s.size).Scan(&fileID); err != nil {
				return err
			}
			payload, err := json.Marshal(map[string]any{
				"file_id":    fileID,
				"name":       s.file,
				"size_bytes": s.size,
				"owner":      map[string]any{"name": s.owner},
				"tags":       []string{"demo", "2026"},
			})
			if err != nil {
				return err
			}
			err = tx.QueryRow(ctx, `INSERT INTO portal_event_outbox (event_type, payload) VALUES ($1, $2)
				RETURNING id, event_id::text`, s.typ, payload).Scan(&e.id, &e.eventID)
			// Taken before COMMIT is sent, so the latency shown includes
			// the commit's own round trip.
			e.committed = time.Now()
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("insert %s: %w", s.typ, err)
		}
		out.printf("   %s committed #%d %-15s id=%.8s… %q", e.committed.Format("15:04:05.000"), e.id, e.typ, e.eventID, e.file)
		events = append(events, e)
		// Spread the commits a little, as real traffic would be.
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return events, nil
}

// printLatency shows, per event, the time from its commit to the arrival
// of its first attempt at the runner.
func printLatency(out *console, events []event, first map[string]time.Time) {
	out.printf("== commit → first attempt received by the runner")
	for _, e := range events {
		if t, ok := first[e.eventID]; ok {
			out.printf("   #%d %-15s %8.1f ms", e.id, e.typ, float64(t.Sub(e.committed).Microseconds())/1000)
		} else {
			out.printf("   #%d %-15s (first attempt not seen)", e.id, e.typ)
		}
	}
}

// outboxRow is a row of the outbox as the summary shows it.
type outboxRow struct {
	id        int64
	typ       string
	status    string
	attempts  int
	lastError string
}

func readOutbox(ctx context.Context, db *pgx.Conn) ([]outboxRow, error) {
	rows, err := db.Query(ctx, `SELECT id, event_type, status, attempts, coalesce(last_error, '')
		FROM portal_event_outbox ORDER BY id`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (outboxRow, error) {
		var o outboxRow
		err := r.Scan(&o.id, &o.typ, &o.status, &o.attempts, &o.lastError)
		return o, err
	})
}

func printOutbox(out *console, rows []outboxRow, requests, badSigs int) {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "   id\tevent_type\tstatus\tattempts\tlast_error")
	totals := map[string]int{}
	for _, r := range rows {
		fmt.Fprintf(tw, "   %d\t%s\t%s\t%d\t%s\n", r.id, r.typ, r.status, r.attempts, r.lastError)
		totals[r.status]++
	}
	tw.Flush()
	out.printf("== the outbox table\n%s", strings.TrimRight(b.String(), "\n"))
	out.printf("   totals: %d delivered, %d dead, %d pending; the runner got %d requests, %d with a bad signature",
		totals["delivered"], totals["dead"], totals["pending"], requests, badSigs)
}

// check compares the table with what each sample expects.
func check(events []event, rows []outboxRow, badSigs int) []string {
	byID := map[int64]outboxRow{}
	for _, r := range rows {
		byID[r.id] = r
	}
	var problems []string
	for _, e := range events {
		r := byID[e.id]
		if r.status != e.wantStatus || r.attempts != e.wantAttempts {
			problems = append(problems, fmt.Sprintf("#%d %s is %s after %d attempts, want %s after %d",
				e.id, e.typ, r.status, r.attempts, e.wantStatus, e.wantAttempts))
		}
	}
	if badSigs > 0 {
		problems = append(problems, fmt.Sprintf("%d requests with a bad signature", badSigs))
	}
	return problems
}
