package cdc

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// ensurePublication creates the outbox's publication, adds the table to a
// publication that lacks it, or adds updates and deletes to one of the
// table alone. It reports whether the publication carries updates and
// deletes: without them the stream cannot tell a row changed later in its
// own transaction, so every row is claimed before it is sent.
func (s *Stream) ensurePublication(ctx context.Context, db *pgx.Conn) (changes bool, err error) {
	pub, err := store.ReadPublication(ctx, db, s.cfg.Publication, s.cfg.table())
	if err != nil {
		return false, fmt.Errorf("read publication %s: %w", s.cfg.Publication, err)
	}
	if !pub.Inserts {
		return false, fmt.Errorf("publication %s does not publish inserts; alter it with publish = 'insert'", s.cfg.Publication)
	}
	changed, err := store.EnsurePublication(ctx, db, pub)
	if err != nil && (!pub.Exists || !pub.HasTable) {
		return false, fmt.Errorf("publication %s: %w", s.cfg.Publication, err)
	}
	if err != nil {
		s.warnClaimFirst(pub, err.Error())
		return false, nil
	}
	if changed {
		s.log.Info("replication: publication set up", "publication", s.cfg.Publication, "table", s.cfg.Schema+"."+s.cfg.Table)
		if pub, err = store.ReadPublication(ctx, db, s.cfg.Publication, s.cfg.table()); err != nil {
			return false, fmt.Errorf("read publication %s: %w", s.cfg.Publication, err)
		}
	}
	if !pub.Changes {
		s.warnClaimFirst(pub, "")
	}
	return pub.Changes, nil
}

// warnClaimFirst says once per process why rows are claimed before they
// are sent: the publication cannot carry the table's updates and deletes.
func (s *Stream) warnClaimFirst(pub store.Publication, cause string) {
	if s.warnedClaimFirst {
		return
	}
	s.warnedClaimFirst = true
	why := "it publishes other tables too"
	switch {
	case !pub.Identity:
		why = "the table has no replica identity (no primary key)"
	case cause != "":
		why = "altering it failed: " + cause
	case pub.Alone:
		why = "it does not publish them"
	}
	s.log.Warn("replication: the publication does not carry the table's updates and deletes, so every row is claimed before it is sent",
		"publication", s.cfg.Publication, "reason", why,
		"fix", fmt.Sprintf("ALTER PUBLICATION %s SET (publish = 'insert, update, delete') as its owner", pgx.Identifier{s.cfg.Publication}.Sanitize()))
}
