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

func runRequeue(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("requeue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f store.RequeueFilter
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
	all := fs.Bool("all", false, "requeue every dead row (needed when no other filter is given)")
	dryRun := fs.Bool("dry-run", false, "count the rows, change nothing")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("requeue takes flags only, got %q", fs.Arg(0))}
	}
	if len(f.IDs) == 0 && f.Type == "" && f.Since.IsZero() && !*all {
		return usageError{errors.New("requeue needs --id, --type, --since or --all")}
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
	n, err := st.Requeue(cctx, f, *dryRun)
	if err != nil {
		return err
	}
	if *dryRun {
		fmt.Fprintf(stdout, "%d dead rows would be requeued\n", n)
	} else {
		fmt.Fprintf(stdout, "requeued %d dead rows\n", n)
	}
	return nil
}
