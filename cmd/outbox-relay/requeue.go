package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/config"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// requeueArgs are requeue's flags besides the filter's own.
type requeueArgs struct {
	limit       int
	all, dryRun bool
}

// requeueFlags declares requeue's flags: those of the filter fill f as
// they parse, the others a.
func requeueFlags(fs *flag.FlagSet, f *store.RequeueFilter, a *requeueArgs) {
	fs.Func("id", "row id to requeue, as the id column holds it (repeat, or comma-separated)", func(s string) error {
		for _, part := range strings.Split(s, ",") {
			id := strings.TrimSpace(part)
			if id == "" {
				return fmt.Errorf("not a row id: %q", part)
			}
			f.IDs = append(f.IDs, id)
		}
		return nil
	})
	fs.StringVar(&f.Type, "type", "", "event_type glob, e.g. 'file.*'")
	fs.Func("since", "only rows created since: an RFC 3339 time or a duration ago (24h)", func(s string) error {
		if d, err := time.ParseDuration(s); err == nil && d > 0 {
			f.Since = time.Now().Add(-d)
			return nil
		}
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return fmt.Errorf("not an RFC 3339 time or a positive duration: %q", s)
		}
		f.Since = t
		return nil
	})
	fs.StringVar(&f.Status, "status", store.StatusDead, "rows to requeue: dead, or delivered to send them again")
	fs.IntVar(&a.limit, "limit", -1, fmt.Sprintf("requeue at most this many rows, the oldest first (default: all dead rows, %d delivered ones)", deliveredLimit))
	fs.BoolVar(&a.all, "all", false, "requeue every row of the status (needed when no other filter is given)")
	fs.BoolVar(&a.dryRun, "dry-run", false, "count the rows, change nothing")
}

func runRequeue(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := newFlags("requeue", stderr)
	var f store.RequeueFilter
	var a requeueArgs
	requeueFlags(fs, &f, &a)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkRequeue(&f, a.limit, a.all); err != nil {
		return usageError{err}
	}
	cfg, err := config.Load(environ, config.NeedDatabase)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	st, err := connectStore(cctx, cfg)
	if err != nil {
		return err
	}
	defer st.Pool().Close()
	matched, err := st.RequeueMatches(cctx, f)
	if err != nil {
		return err
	}
	bound := ""
	if f.Limit > 0 {
		bound = fmt.Sprintf(" (--limit %d)", f.Limit)
	}
	verb := "will be requeued"
	if a.dryRun {
		verb = "would be requeued"
	}
	fmt.Fprintf(stdout, "%d %s rows match; %d %s%s\n", matched, f.Status, capped(matched, f.Limit), verb, bound)
	if a.dryRun {
		return nil
	}
	n, err := st.Requeue(cctx, f, false)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "requeued %d %s rows\n", n, f.Status)
	return nil
}

// deliveredLimit bounds a replay of delivered rows unless --limit says
// otherwise: a filter typed wrong should not send a year of events again.
const deliveredLimit = 1000

// checkRequeue checks the flags and sets the limit: given, or the
// default of the status.
func checkRequeue(f *store.RequeueFilter, limit int, all bool) error {
	if f.Status != store.StatusDead && f.Status != store.StatusDelivered {
		return fmt.Errorf("--status must be dead or delivered, not %q", f.Status)
	}
	if len(f.IDs) == 0 && f.Type == "" && f.Since.IsZero() && !all {
		return errors.New("requeue needs --id, --type, --since or --all")
	}
	switch {
	case limit == -1 && f.Status == store.StatusDelivered:
		f.Limit = deliveredLimit
	case limit == -1:
		f.Limit = 0 // every dead row, as requeue always did
	case limit < 1:
		return fmt.Errorf("--limit must be at least 1, not %d (leave it out for the default)", limit)
	default:
		f.Limit = limit
	}
	return nil
}

// capped is n bounded by limit; 0 is no bound.
func capped(n int64, limit int) int64 {
	if limit > 0 {
		return min(n, int64(limit))
	}
	return n
}
