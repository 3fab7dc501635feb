package cdc

import (
	"github.com/jackc/pglogrepl"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// How the reader finds the outbox among the relations pgoutput announces
// and decodes its inserted rows.

// relation is what the reader knows of a relation: where the outbox's id
// column is (-1: not the outbox), and how to decode its rows whole (nil:
// ids only).
type relation struct {
	id  int
	dec *store.TupleDecoder
}

// relation learns where the id column of the outbox table is, and whether
// its rows can be decoded whole from the tuple.
func (r *reader) relation(m *pglogrepl.RelationMessage) {
	rel := relation{id: -1}
	if m.Namespace == r.s.cfg.Schema && m.RelationName == r.s.cfg.Table {
		names := make([]string, len(m.Columns))
		for i, c := range m.Columns {
			names[i] = c.Name
			if c.Name == r.s.cfg.IDColumn && rel.id < 0 {
				rel.id = i
			}
		}
		if rel.id < 0 && !r.warnedNoID {
			r.warnedNoID = true
			r.s.log.Error("replication: the outbox table has no id column; inserts are left to the sweeper", "column", r.s.cfg.IDColumn)
		}
		if r.s.cfg.Outbox != nil && r.start.horizon != 0 && !r.start.claimFirst && r.start.changes {
			rel.dec, _ = r.s.cfg.Outbox.TupleDecoder(names)
		}
	}
	r.rels[m.RelationID] = rel
}

// insert is a row inserted into the outbox table: its id in text form
// whatever the column's type (the claim casts it back), and the whole row
// when it can be sent from the tuple, with its due time on this host's
// clock.
func (r *reader) insert(m *pglogrepl.InsertMessage) (store.Insert, bool) {
	rel, ok := r.rels[m.RelationID]
	if !ok || rel.id < 0 || m.Tuple == nil || rel.id >= len(m.Tuple.Columns) {
		return store.Insert{}, false
	}
	cols := m.Tuple.Columns
	col := cols[rel.id]
	if col.DataType != pglogrepl.TupleDataTypeText || len(col.Data) == 0 {
		return store.Insert{}, false
	}
	byID := store.Insert{Row: store.Row{ID: string(col.Data)}}
	if rel.dec == nil || r.replay {
		return byID, true
	}
	for _, c := range cols {
		if c.DataType != pglogrepl.TupleDataTypeText && c.DataType != pglogrepl.TupleDataTypeNull {
			return byID, true // unchanged TOAST or binary: not whole
		}
	}
	in, ok := rel.dec.Decode(func(i int) ([]byte, bool) {
		if i >= len(cols) {
			return nil, true
		}
		return cols[i].Data, cols[i].DataType == pglogrepl.TupleDataTypeNull
	})
	if !ok {
		return byID, true
	}
	in.Due = in.Due.Add(-r.start.offset)
	return in, true
}
