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
// Rows wait whole, to be sent from their tuple, within a budget of bytes
// that they share with the rows the reader holds for their commit and,
// when the reader holds a row, with the ids waiting (idBytes each); past
// it, and for rows that cannot be sent from their tuple, only the id
// waits, to be claimed. So behind a backlog of ids few rows wait whole,
// and the hand-off holds about the budget or its ids, whichever is more
// (limit bounds the ids). Takes serve whole rows and ids in turn, each in
// the order put, so that neither waits for the other to run out (ids are
// never ordered against rows: a table ordered per key is claimed by id
// throughout, and the claim keeps its order). So a burst far larger than
// the deliverer's pace stays with the stream instead of falling back to
// the sweeper's grace, in bounded memory. The budget is in bytes, not
// rows, because every row a burst sends from its tuple saves the claim's
// statement and row version, while payloads vary in size.
type handoff struct {
	mu     sync.Mutex
	queue  [][]store.Insert // lists of whole rows, first out
	head   int              // rows of queue[0] taken
	queued int              // rows in queue not taken
	more   []string         // ids, taken in turn with whole rows
	idTurn bool             // the next take serves ids, if any wait
	bytes  int              // held by queue
	whole  int              // the budget of bytes of whole rows
	limit  int              // rows and ids buffered before put waits

	ready chan struct{} // signalled when ids were put
	space chan struct{} // signalled when ids were taken
}

func newHandoff(whole, limit int) *handoff {
	return &handoff{whole: whole, limit: limit, ready: make(chan struct{}, 1), space: make(chan struct{}, 1)}
}

// idBytes is about what an id waiting in the hand-off holds: its string
// header and its text.
const idBytes = 32

// wholeBytes is how many bytes of the budget the rows and ids waiting
// take: what a row the reader holds must fit beside.
func (h *handoff) wholeBytes() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.bytes + idBytes*len(h.more)
}

// len is how many rows wait; h.mu is held.
func (h *handoff) len() int { return h.queued + len(h.more) }

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
// thing the table-as-queue design avoids. When put takes the list itself
// rather than a copy (see add) it sets *ids to nil.
func (h *handoff) put(ctx context.Context, ids *[]store.Insert, wait time.Duration) (bool, error) {
	var timeout <-chan time.Time
	for {
		h.mu.Lock()
		if h.len() < h.limit {
			h.add(ids)
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

// add appends ids: whole while the budget's bytes of whole rows last,
// else as ids; h.mu is held. Whole rows come from a transaction's held
// list, which hold kept within the budget as it stood with the ids then
// waiting; ids put since (a large transaction's, flushed before its
// commit) do not make them ids now: they are in memory already, and a
// claim would cost more than it frees. A large list joins the queue as it
// is, not copied: a large transaction's rows are in memory once, not once
// in the reader and again here (the peak of a bulk insert). A small one is
// copied to the queue's last list, so that a steady stream reuses its
// room.
func (h *handoff) add(ids *[]store.Insert) {
	list := *ids
	k := 0
	for _, in := range list {
		if n := size(in); in.Sendable && h.bytes+n <= h.whole {
			h.bytes += n
			list[k] = in
			k++
		} else {
			h.more = append(h.more, in.Row.ID)
		}
	}
	if k == 0 {
		return
	}
	h.queued += k
	if cap(list) > keepWhole {
		clear(list[k:]) // rows that went on as ids: let their payloads go
		if n := len(h.queue); n > 0 && len(h.queue[n-1]) == 0 {
			h.queue[n-1] = list[:k] // in place of an emptied list's room
		} else {
			h.queue = append(h.queue, list[:k])
		}
		*ids = nil
		return
	}
	last := len(h.queue) - 1
	if last < 0 {
		h.queue = append(h.queue, make([]store.Insert, 0, k))
		last = 0
	}
	tail := h.queue[last]
	if last == 0 && len(tail)+k > cap(tail) && h.head > 0 { // reuse the taken front
		n := copy(tail, tail[h.head:])
		clear(tail[n:]) // the rows moved down: let their old slots go
		tail, h.head = tail[:n], 0
	}
	h.queue[last] = append(tail, list[:k]...)
}

// take removes and returns up to n rows, nil when there are none: whole
// rows and ids in turn.
func (h *handoff) take(n int) []store.Insert {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.len() == 0 {
		return nil
	}
	defer signal(h.space)
	h.idTurn = !h.idTurn
	if h.queued > 0 && (!h.idTurn || len(h.more) == 0) {
		first := h.queue[0]
		k := min(n, len(first)-h.head)
		ids := slices.Clone(first[h.head : h.head+k])
		clear(first[h.head : h.head+k]) // let their payloads go
		h.head += k
		h.queued -= k
		for _, in := range ids {
			h.bytes -= size(in)
		}
		if h.head == len(first) {
			h.head = 0
			if len(h.queue) == 1 && cap(first) <= keepWhole {
				h.queue[0] = first[:0] // a steady stream reuses the room
			} else {
				h.queue[0] = nil // let a burst's list go
				h.queue = h.queue[1:]
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
