package cdc

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// The readiness rules: what logical replication needs of the server, the
// role, the publication and the slot, written once as data. The stream's
// check (Check, and the re-check of a server that could not stream) and
// `outbox-relay check` both render Judge: the check stops at the first
// failure, the command shows every verdict.

// Status is a rule's verdict.
type Status string

// The verdicts; check shows each with its own mark.
const (
	StatusOK      Status = "ok"
	StatusWarn    Status = "warn"
	StatusFail    Status = "fail"
	StatusUnknown Status = "unknown" // a fact could not be read
	StatusSkip    Status = "skip"    // does not apply, or depends on a rule that failed
)

// Verdict is what one rule says of the facts.
type Verdict struct {
	Item   string // the rule's name, as check lists it
	Status Status
	Detail string // one line: what was found
	Fix    string // what to do, when Status is not ok
	// Lasting: a failure only the server's operator can end (wal_level, a
	// role attribute), as opposed to a passing one (every WAL sender busy).
	Lasting bool
	// Objects: the rule judges the database's objects (the publication,
	// the slot), which check lists after the table.
	Objects bool
}

// String is the verdict on one line, as the stream's check says it.
func (v Verdict) String() string {
	if v.Fix == "" {
		return v.Item + ": " + v.Detail
	}
	return fmt.Sprintf("%s: %s (fix: %s)", v.Item, v.Detail, v.Fix)
}

// Facts are what the rules are judged from, each read once. A fact that
// could not be read carries its error instead.
type Facts struct {
	Server       store.Server
	Settings     store.ReplicationSettings
	Slot         store.Slot
	SlotSettings store.SlotSettings
	Holder       store.Session // who streams from the slot, when it is active and fits
	Publication  store.Publication
	Scope        store.PublicationScope
	// ReplConn is the outcome of opening a replication connection;
	// errNotTried until Probe runs (and after, when the role may not
	// replicate).
	ReplConn error

	ServerErr, SettingsErr, SlotErr, SlotSettingsErr error
	HolderErr, PublicationErr                        error
}

var errNotTried = errors.New("not tried")

// ReadFacts reads everything the rules judge except the replication
// connection (see Probe), for the outbox, slot and publication of cfg.
func ReadFacts(ctx context.Context, db *pgx.Conn, cfg Config) Facts {
	f := Facts{ReplConn: errNotTried}
	f.Server, f.ServerErr = store.ReadServer(ctx, db)
	f.Settings, f.SettingsErr = store.ReadReplicationSettings(ctx, db)
	f.Slot, f.SlotErr = store.SlotInfo(ctx, db, cfg.Slot)
	f.SlotSettings, f.SlotSettingsErr = store.ReadSlotSettings(ctx, db)
	if f.SlotErr == nil && f.Slot.Active && SlotFits(f.Slot) {
		f.Holder, _, f.HolderErr = store.ReadSession(ctx, db, f.Slot.ActivePID)
	}
	f.Publication, f.PublicationErr = store.ReadPublication(ctx, db, cfg.Publication, cfg.table())
	if f.PublicationErr == nil {
		f.Scope, f.PublicationErr = store.ReadPublicationScope(ctx, db, cfg.Publication)
	}
	return f
}

// Probe opens a replication connection as the stream does, when the role
// may replicate: pg_hba.conf can still refuse it one. The outcome never
// holds the password.
func (f *Facts) Probe(ctx context.Context, cfg Config) {
	conf, err := parseConfig(cfg.DatabaseURL)
	if err != nil {
		f.ReplConn = err
		return
	}
	f.probe(ctx, conf)
}

func (f *Facts) probe(ctx context.Context, conf dbConfig) {
	if f.SettingsErr != nil || !f.Settings.CanReplicate {
		return
	}
	f.ReplConn = probeReplication(ctx, conf)
	if f.ReplConn == nil {
		return
	}
	redacted := errors.New(redact(f.ReplConn, conf.sql.Password))
	var un *errUnavailable
	if errors.As(f.ReplConn, &un) {
		f.ReplConn = &errUnavailable{redacted}
	} else {
		f.ReplConn = redacted
	}
}

// rule is one readiness rule: the facts it reads, and outcomes tried in
// order, the first whose condition holds deciding.
type rule struct {
	item    string
	objects bool
	// unread names the first fact the rule needs that could not be read,
	// with its error; nil when all were read.
	unread   func(f *Facts, c Config) (what string, err error)
	outcomes []outcome
}

// outcome is one verdict of a rule: when it holds (always, when nil),
// what it says and its fix. An outcome without a detail leaves the rule
// silent: a setting the server does not have.
type outcome struct {
	when    func(f *Facts, c Config) bool
	status  Status
	detail  func(f *Facts, c Config) string
	fix     func(f *Facts, c Config) string
	lasting bool
}

// text is a detail or fix that does not depend on the facts.
func text(s string) func(*Facts, Config) string {
	return func(*Facts, Config) string { return s }
}

// Judge applies every rule to the facts, in the order check lists them;
// a rule with nothing to say on this server gives no verdict.
func Judge(f Facts, c Config) []Verdict {
	var out []Verdict
	for _, r := range rules {
		if v, ok := r.judge(&f, c); ok {
			out = append(out, v)
		}
	}
	return out
}

func (r rule) judge(f *Facts, c Config) (Verdict, bool) {
	v := Verdict{Item: r.item, Objects: r.objects}
	if r.unread != nil {
		if what, err := r.unread(f, c); err != nil {
			v.Status, v.Detail = StatusUnknown, fmt.Sprintf("cannot read %s: %v", what, err)
			return v, true
		}
	}
	for _, o := range r.outcomes {
		if o.when != nil && !o.when(f, c) {
			continue
		}
		if o.detail == nil {
			return v, false
		}
		v.Status, v.Detail, v.Lasting = o.status, o.detail(f, c), o.lasting
		if o.fix != nil {
			v.Fix = o.fix(f, c)
		}
		return v, true
	}
	return v, false
}

// rules is the table, in the order check lists the items.
var rules = []rule{
	walLevelRule, capacityRule, keepSizeRule, idleTimeoutRule, roleRule, replConnRule,
	publicationRule, slotRule, failoverRule,
}

// firstFailure is the verdict the stream's check reports: the first that
// fails, lasting when any failure is, else the first that could not be
// read; ok is false when nothing stands in the way.
func firstFailure(vs []Verdict) (v Verdict, ok bool) {
	var unknown *Verdict
	for i := range vs {
		switch vs[i].Status {
		case StatusFail:
			v, ok = vs[i], true
			for _, w := range vs[i:] {
				v.Lasting = v.Lasting || (w.Status == StatusFail && w.Lasting)
			}
			return v, ok
		case StatusUnknown:
			if unknown == nil {
				unknown = &vs[i]
			}
		}
	}
	if unknown != nil {
		return *unknown, true
	}
	return Verdict{}, false
}
