package store

import "github.com/jackc/pgx/v5"

// traceColumns is how many trace context columns the claim returns beyond
// the event: traceparent's when that role is mapped, and tracestate's when
// it is mapped too (a tracestate means nothing without its traceparent).
func (s *Schema) traceColumns() int {
	switch {
	case !s.Has(RoleTraceparent):
		return 0
	case !s.Has(RoleTracestate):
		return 1
	}
	return 2
}

// traceReturning is the claim's RETURNING list for those columns: empty
// when none is mapped, so the claim of a table without them is unchanged.
func (s *Schema) traceReturning() string {
	return []string{"", ", o.{traceparent}::text", ", o.{traceparent}::text, o.{tracestate}::text"}[s.traceColumns()]
}

// scanClaimed reads one row of a claim into cr.
func (s *Store) scanClaimed(rows pgx.Rows, cr *claimedRow) error {
	switch s.traceCols {
	case 0:
		return rows.Scan(&cr.id, &cr.eventID, &cr.eventType, &cr.payload, &cr.createdAt, &cr.attempt, &cr.buried)
	case 1:
		return rows.Scan(&cr.id, &cr.eventID, &cr.eventType, &cr.payload, &cr.createdAt, &cr.attempt, &cr.buried,
			&cr.traceparent)
	}
	return rows.Scan(&cr.id, &cr.eventID, &cr.eventType, &cr.payload, &cr.createdAt, &cr.attempt, &cr.buried,
		&cr.traceparent, &cr.tracestate)
}
