package store

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

// scanInto is where one row of the claim sql goes: the claim's own
// columns, then the trace context when mapped, then the ordering key (and,
// by id, whether the row was only seen) when rows are ordered.
func (s *Store) scanInto(cr *claimedRow, sql string) []any {
	dest := []any{&cr.id, &cr.eventID, &cr.eventType, &cr.payload, &cr.createdAt, &cr.attempt, &cr.buried}
	dest = append(dest, []any{&cr.traceparent, &cr.tracestate}[:s.traceCols]...)
	return s.scanKey(cr, dest, sql)
}
