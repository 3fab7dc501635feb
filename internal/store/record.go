package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Record stores the outcomes of attempts, in one statement unless the
// database refuses some rows: those come back in refused, the others are
// written. unseen are fresh outcomes (Kind.Fresh) whose row the write did
// not find as it was inserted: not visible yet (a commit reaches the stream
// a moment before it is visible to other sessions) or claimed by someone
// else since; the caller may try them again a moment later. err is a
// failure of the database as a whole (unreachable, read only): nothing need
// have been written, and the batch may be retried.
func (s *Store) Record(ctx context.Context, results []Result) (refused []Refused, unseen []Result, err error) {
	refused, err = isolate(ctx, results, func(r Result) string { return r.ID }, func(ctx context.Context, batch []Result) error {
		u, err := s.recordOnce(ctx, batch)
		if err == nil {
			unseen = append(unseen, u...)
		}
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return refused, unseen, nil
}

// recordOnce writes results and returns the fresh ones it did not find.
func (s *Store) recordOnce(ctx context.Context, results []Result) (unseen []Result, err error) {
	n := len(results)
	ids, attempts := make([]string, n), make([]int32, n)
	statuses, errs := make([]string, n), make([]string, n)
	nexts, uncount, fresh := make([]time.Time, n), make([]bool, n), make([]bool, n)
	for i, r := range results {
		ids[i], attempts[i], statuses[i], nexts[i], errs[i] = r.ID, int32(r.Attempt), r.Status, r.Next, r.Error
		uncount[i] = r.Kind.Uncounted() && r.Status == StatusPending
		fresh[i] = r.Kind.Fresh()
	}
	rows, err := s.writer.Query(ctx, s.record, ids, attempts, statuses, nexts, errs, uncount, fresh)
	if err != nil {
		return nil, fmt.Errorf("record outcomes: %w", err)
	}
	written, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("record outcomes: %w", err)
	}
	if len(written) == n {
		return nil, nil
	}
	found := make(map[string]bool, len(written))
	for _, id := range written {
		found[id] = true
	}
	for _, r := range results {
		if r.Kind.Fresh() && !found[r.ID] {
			unseen = append(unseen, r)
		}
	}
	return unseen, nil
}

// Release gives back the leases of rows that were claimed but not sent;
// refused and err as for Record.
func (s *Store) Release(ctx context.Context, rows []Row) (refused []Refused, err error) {
	return isolate(ctx, rows, func(r Row) string { return r.ID }, s.release1)
}

func (s *Store) release1(ctx context.Context, rows []Row) error {
	ids, attempts := make([]string, len(rows)), make([]int32, len(rows))
	for i, r := range rows {
		ids[i], attempts[i] = r.ID, int32(r.Attempt)
	}
	if _, err := s.pool.Exec(ctx, s.release, ids, attempts); err != nil {
		return fmt.Errorf("release leases: %w", err)
	}
	return nil
}
