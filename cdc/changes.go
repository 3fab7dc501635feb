package cdc

import (
	"github.com/jackc/pglogrepl"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// The stream sends a row as its transaction committed it, or not at all.
//
// A transaction may change an outbox row after inserting it: fill in its
// payload, move its next_attempt_at ahead, delete it. pgoutput sends every
// change of a transaction only once it has committed, in the order made,
// so the reader holds a transaction's rows decoded whole until its commit
// arrives, and a later update, delete or truncate of one of them makes it
// a row to claim by id (the claim reads the committed row, and takes it
// only when due) or, once deleted, nothing. A change the reader cannot
// tie to a held row's id (a replica identity without the id) makes every
// held row of the transaction one to claim.

// heldScan is how many held rows a change looks through one by one; past
// it the reader indexes them by id.
const heldScan = 32

// changeOnly reports whether a pgoutput message type is an update, a
// delete or a truncate.
func changeOnly(t byte) bool { return t == 'U' || t == 'D' || t == 'T' }

// hold keeps a row decoded whole for its transaction's commit, within the
// hand-off's budget of whole rows: rows held for their commit and rows
// waiting whole in the hand-off share it, so that at the commit every held
// row fits in the hand-off whole, and a large transaction's rows cost the
// memory of one budget, not two. A row past the budget, or not whole, is
// an id to claim instead (in is made one) and hold returns false.
func (r *reader) hold(in *store.Insert) bool {
	if !in.Sendable {
		return false
	}
	n := size(*in)
	if r.heldBytes+r.h.wholeBytes()+n > r.h.whole {
		*in = store.Insert{Row: store.Row{ID: in.Row.ID}}
		return false
	}
	if r.heldAt != nil {
		r.heldAt[in.Row.ID] = len(r.held)
	}
	r.held = append(r.held, *in)
	r.heldBytes += n
	return true
}

// release makes the held rows still standing the pending ones, at a
// commit, once nothing else is pending (committed hands that off first):
// the held list itself becomes the pending one, so that a large
// transaction's rows are not copied (the hand-off may take the list too).
func (r *reader) release() {
	standing := r.held[:0]
	for _, in := range r.held {
		if in.Row.ID != "" {
			standing = append(standing, in)
		}
	}
	clear(r.held[len(standing):])
	r.pending, r.held = standing, r.pending[:0]
	r.heldBytes, r.heldAt = 0, nil
}

// emptied is list with its rows let go: the room of a steady stream is
// kept, a large transaction's goes.
func emptied(list []store.Insert) []store.Insert {
	if cap(list) > keepWhole {
		return nil
	}
	clear(list)
	return list[:0]
}

// find returns where the held row id is, or -1.
func (r *reader) find(id string) int {
	if len(r.held) <= heldScan {
		for i := range r.held {
			if r.held[i].Row.ID == id {
				return i
			}
		}
		return -1
	}
	if r.heldAt == nil {
		r.heldAt = make(map[string]int, len(r.held))
		for i := range r.held {
			if r.held[i].Row.ID != "" {
				r.heldAt[r.held[i].Row.ID] = i
			}
		}
	}
	if i, ok := r.heldAt[id]; ok && r.held[i].Row.ID == id {
		return i
	}
	return -1
}

// forget takes held row i out, returning it.
func (r *reader) forget(i int) store.Insert {
	in := r.held[i]
	r.heldBytes -= size(in)
	r.held[i] = store.Insert{}
	if r.heldAt != nil {
		delete(r.heldAt, in.Row.ID)
	}
	return in
}

// claimInstead makes held row id, if any, a row to claim by id.
func (r *reader) claimInstead(id string) {
	if i := r.find(id); i >= 0 {
		in := r.forget(i)
		r.pending = append(r.pending, store.Insert{Row: store.Row{ID: in.Row.ID}})
	}
}

// claimAll makes every held row a row to claim by id.
func (r *reader) claimAll() {
	for i := range r.held {
		if r.held[i].Row.ID != "" {
			in := r.forget(i)
			r.pending = append(r.pending, store.Insert{Row: store.Row{ID: in.Row.ID}})
		}
	}
}

// outboxID reads the id of an outbox row from a tuple. ok is false when
// the relation is not the outbox; known is false when the tuple does not
// carry the id (a replica identity without it).
func (r *reader) outboxID(relID uint32, t *pglogrepl.TupleData) (id string, ok, known bool) {
	rel, found := r.rels[relID]
	if !found || rel.id < 0 {
		return "", false, false
	}
	if t == nil || rel.id >= len(t.Columns) {
		return "", true, false
	}
	c := t.Columns[rel.id]
	if c.DataType != pglogrepl.TupleDataTypeText || len(c.Data) == 0 {
		return "", true, false
	}
	return string(c.Data), true, true
}

// updated: a held row changed in its own transaction is claimed, as
// committed, instead of sent from its first tuple.
func (r *reader) updated(m *pglogrepl.UpdateMessage) {
	id, ok, known := r.outboxID(m.RelationID, m.NewTuple)
	if !ok {
		return
	}
	if !known {
		r.claimAll()
		return
	}
	r.claimInstead(id)
	if m.OldTuple != nil {
		// The id itself changed: the old one's row is gone.
		if old, _, known := r.outboxID(m.RelationID, m.OldTuple); !known {
			r.claimAll()
		} else {
			r.claimInstead(old)
		}
	}
}

// deleted: a held row deleted in its own transaction is not sent.
func (r *reader) deleted(m *pglogrepl.DeleteMessage) {
	id, ok, known := r.outboxID(m.RelationID, m.OldTuple)
	switch {
	case !ok:
	case !known:
		r.claimAll()
	default:
		if i := r.find(id); i >= 0 {
			r.forget(i)
		}
	}
}

// truncated: held rows of a truncated outbox are claimed, which finds
// none of them.
func (r *reader) truncated(m *pglogrepl.TruncateMessage) {
	for _, id := range m.RelationIDs {
		if rel, ok := r.rels[id]; ok && rel.id >= 0 {
			r.claimAll()
			return
		}
	}
}
