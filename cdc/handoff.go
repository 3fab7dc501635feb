package cdc

import (
	"context"
	"slices"
	"sync"
	"time"
	"unsafe"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// handoff passes ids from the reader to the goroutine that calls the
// Deliverer. The reader puts a transaction's ids at its commit; the
// goroutine takes whatever has gathered each time it is free, up to
// BatchSize. So a lone insert is claimed the moment its commit arrives,
// and under load the batches grow by themselves to what arrives during one
// claim: no timer adds latency, and a burst costs few claim statements.
// (BenchmarkHandOff compares this with waiting for a pause in the stream.)
//
// The first rows wait whole, to be sent from their tuple, up to a budget of
// bytes; behind them, a backlog waits as ids only (about 32 bytes each), to
// be claimed by id: rows that wait that long are past sending without a
// claim anyway, and a burst far larger than the deliverer's pace stays with
// the stream instead of falling back to the sweeper's grace. The budget is
// in bytes, not rows, because every row a burst sends from its tuple saves
// the claim's statement and row version, while payloads vary in size.
type handoff struct {
	mu    sync.Mutex
	ids   []store.Insert // whole rows (or ids, when not decoded), first out
	head  int            // ids before head were taken
	more  []string       // the backlog behind ids, as ids
	bytes int            // held by ids
	whole int            // bytes of whole rows kept before the backlog starts
	limit int            // rows and ids buffered before put waits

	ready chan struct{} // signalled when ids were put
	space chan struct{} // signalled when ids were taken
}

func newHandoff(whole, limit int) *handoff {
	return &handoff{whole: whole, limit: limit, ready: make(chan struct{}, 1), space: make(chan struct{}, 1)}
}

// wholeBytes is how many bytes of rows wait whole.
func (h *handoff) wholeBytes() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.bytes
}

// len is how many rows wait; h.mu is held.
func (h *handoff) len() int { return len(h.ids) - h.head + len(h.more) }

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// put adds ids, waiting up to wait while the buffer is full. Past that it
// drops them and returns false: the rows are safe in the table and the
// sweeper delivers them, while the reader goes on reading and confirming.
// Waiting longer would make a slow runner pin WAL in the slot, the very
// thing the table-as-queue design avoids.
func (h *handoff) put(ctx context.Context, ids []store.Insert, wait time.Duration) (bool, error) {
	var timeout <-chan time.Time
	for {
		h.mu.Lock()
		if h.len() < h.limit {
			for _, in := range ids {
				if n := size(in); len(h.more) == 0 && h.bytes+n <= h.whole {
					if len(h.ids) == cap(h.ids) && h.head > 0 { // reuse the taken front
						n := copy(h.ids, h.ids[h.head:])
						clear(h.ids[n:]) // the rows moved down: let their old slots go
						h.ids, h.head = h.ids[:n], 0
					}
					h.ids = append(h.ids, in)
					h.bytes += n
				} else {
					h.more = append(h.more, in.Row.ID)
				}
			}
			h.mu.Unlock()
			signal(h.ready)
			return true, nil
		}
		h.mu.Unlock()
		if wait <= 0 {
			return false, nil
		}
		if timeout == nil {
			t := time.NewTimer(wait)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-h.space:
		case <-timeout:
			return false, nil
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
}

// take removes and returns up to n rows, nil when there are none: whole
// rows first, then the backlog's ids.
func (h *handoff) take(n int) []store.Insert {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.len() == 0 {
		return nil
	}
	defer signal(h.space)
	if h.head < len(h.ids) {
		k := min(n, len(h.ids)-h.head)
		ids := slices.Clone(h.ids[h.head : h.head+k])
		clear(h.ids[h.head : h.head+k]) // let their payloads go
		h.head += k
		for _, in := range ids {
			h.bytes -= size(in)
		}
		if h.head == len(h.ids) {
			h.ids, h.head = h.ids[:0], 0
			if cap(h.ids) > keepWhole {
				h.ids = nil // let a burst's buffer go
			}
		}
		return ids
	}
	k := min(n, len(h.more))
	ids := byID(h.more[:k])
	h.more = h.more[k:]
	if len(h.more) == 0 {
		h.more = nil // let a burst's backlog go
	}
	return ids
}

// keepWhole is the most rows whose room the hand-off keeps once empty:
// a steady stream reuses it, a burst's larger buffer goes.
const keepWhole = 1024

// insertBytes is what an Insert holds besides its strings.
const insertBytes = int(unsafe.Sizeof(store.Insert{}))

// size is about how much memory a row waiting whole holds.
func size(in store.Insert) int {
	r := &in.Row
	return insertBytes + len(r.ID) + len(r.EventID) + len(r.Type) + len(r.Payload) + len(r.Traceparent) + len(r.Tracestate)
}

// byID makes inserts to be claimed by id.
func byID(ids []string) []store.Insert {
	ins := make([]store.Insert, len(ids))
	for i, id := range ids {
		ins[i].Row.ID = id
	}
	return ins
}

// retryIDs are ids the Deliverer did not find, to be claimed again at at.
type retryIDs struct {
	ids     []string
	attempt int // retries made so far
	at      time.Time
}

// handOff calls the Deliverer with the ids the reader puts, so that a slow
// claim never stops the stream from being read. Ids the claim did not find
// are tried again after missingRetries, without holding up the ids behind
// them. It returns when ctx is done; ids still buffered are left to the
// sweeper, like everything else the stream drops.
func (s *Stream) handOff(ctx context.Context, h *handoff) {
	var retries []retryIDs // by at
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	failing := false
	for {
		var due <-chan time.Time
		if len(retries) > 0 {
			timer.Reset(time.Until(retries[0].at))
			due = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-h.ready:
		case <-due:
		}
		for ids := h.take(s.cfg.BatchSize); ids != nil && ctx.Err() == nil; ids = h.take(s.cfg.BatchSize) {
			retries = s.deliver(ctx, ids, 0, retries, &failing)
		}
		now := time.Now()
		for len(retries) > 0 && !retries[0].at.After(now) && ctx.Err() == nil {
			r := retries[0]
			retries = retries[1:]
			retries = s.deliver(ctx, byID(r.ids), r.attempt, retries, &failing)
		}
	}
}

// deliver makes one claim and schedules a retry of the ids it missed.
func (s *Stream) deliver(ctx context.Context, ids []store.Insert, attempt int, retries []retryIDs, failing *bool) []retryIDs {
	missing, err := s.d.DeliverInserts(ctx, ids)
	switch {
	case err != nil && ctx.Err() != nil:
		return retries
	case err != nil:
		if !*failing {
			*failing = true
			s.log.Warn("replication: hand-off to the deliverer failed; the sweeper delivers those rows",
				"ids", len(ids), "error", s.redact(err))
		}
		signal(s.wake)
		return retries
	case *failing:
		*failing = false
		s.log.Info("replication: hand-off to the deliverer works again")
	}
	if len(missing) == 0 || attempt >= len(missingRetries) {
		return retries
	}
	r := retryIDs{ids: missing, attempt: attempt + 1, at: time.Now().Add(missingRetries[attempt])}
	i, _ := slices.BinarySearchFunc(retries, r.at, func(e retryIDs, t time.Time) int { return e.at.Compare(t) })
	return slices.Insert(retries, i, r)
}
