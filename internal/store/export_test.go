package store

import "time"

// Statements is the text of every statement st runs on its table, and of
// the DDL migrate runs for it with publication: what the quoting fuzz test
// (package store_test, which may import config) checks.
func Statements(st *Store, publication string) []string {
	s := st.schema
	out := []string{st.claimIDs, st.claimDue, st.dueIDs, st.record, st.release, st.nextDue, st.lease,
		s.statsSQL(false), s.statsSQL(true), s.deleteDeliveredSQL()}
	if st.Ordered() {
		out = append(out, st.claimKeys, st.orderingStatsSQL())
	}
	for _, f := range []RequeueFilter{
		{},
		{Status: StatusDelivered, IDs: []string{"1"}, Type: "file.*", Since: time.Unix(0, 0), Limit: 10},
	} {
		q, _ := s.requeueMatchesSQL(f)
		out = append(out, q)
		for _, dryRun := range []bool{false, true} {
			q, _ := s.requeueSQL(f, dryRun)
			out = append(out, q)
		}
	}
	return append(out, MigrateSQL(s, publication)...)
}
