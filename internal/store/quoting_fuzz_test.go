package store_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/outbox-relay/outbox-relay/internal/config"
	"github.com/outbox-relay/outbox-relay/internal/store"
)

// Whatever RELAY_OUTBOX_TABLE, RELAY_COLUMNS and RELAY_STATUS_VALUES hold,
// if the config accepts them, every statement the store builds holds each
// name only as a quoted identifier and each status value only as a
// literal. Each statement is built twice: from the configuration, and from
// one where every name and value is a harmless stand-in. Lexed as the
// server lexes them, with standard_conforming_strings on and off, the two
// must have the same tokens, except that a literal or a quoted identifier
// holds exactly what the stand-in's holds with the stand-in replaced by the
// configured text.
func FuzzStatementsKeepConfigAsData(f *testing.F) {
	f.Add("public.portal_event_outbox", "", "")
	f.Add("outbox", "ordering_key=entity,traceparent=tp,tracestate=ts", "pending=NEW,delivered=SENT,dead=FAILED")
	f.Add("app.outbox", "id=id,event_id=id,status=state", "pending=0,delivered=+1,dead=-2")
	f.Fuzz(func(t *testing.T, table, columns, statuses string) {
		cfg, err := config.Load([]string{"RELAY_OUTBOX_TABLE=" + table, "RELAY_COLUMNS=" + columns,
			"RELAY_STATUS_VALUES=" + statuses}, config.NeedTable)
		if err != nil {
			return
		}
		in := standIns(cfg.Table, cfg.Columns, cfg.Statuses)
		got, want := statements(cfg.Table, cfg.Columns, cfg.Statuses), statements(in.table, in.cols, in.st)
		if len(got) != len(want) {
			t.Fatalf("%d statements, %d with stand-ins", len(got), len(want))
		}
		for i := range got {
			if strings.ContainsRune(got[i], 0) || !utf8.ValidString(got[i]) {
				t.Fatalf("statement holds a NUL or is not UTF-8:\n%q", got[i])
			}
			for _, scs := range []bool{true, false} {
				if err := sameShape(got[i], want[i], scs, in); err != nil {
					t.Fatalf("standard_conforming_strings %v: %v\nstatement:\n%s\nwith stand-ins:\n%s", scs, err, got[i], want[i])
				}
			}
		}
	})
}

// statements are those of every store on the table: without and with
// the trace context columns mapped (Planned leaves them out), on the table
// migrate makes and on one with a text id and a varchar(n) NOT NULL
// last_error, with dead rows skipped and blocking.
func statements(t store.Table, cols store.Columns, st store.Statuses) []string {
	var out []string
	for _, adopted := range []bool{false, true} {
		s := store.Planned(t, cols, st)
		for _, r := range []store.Role{store.RoleTraceparent, store.RoleTracestate} {
			if cols.Has(r) {
				s.Columns[r] = store.Column{Name: cols[r], Type: "text"}
			}
		}
		if adopted {
			s.Columns[store.RoleLastError] = store.Column{Name: cols[store.RoleLastError], Type: "varchar", Length: 255, NotNull: true}
			if cols[store.RoleID] != cols[store.RoleEventID] {
				s.Columns[store.RoleID] = store.Column{Name: cols[store.RoleID], Type: "text", NotNull: true}
			}
		}
		for _, p := range []store.OnDead{store.OnDeadSkip, store.OnDeadBlock} {
			out = append(out, store.Statements(store.New(nil, s, store.WithOrderingOnDead(p)), "outbox_relay")...)
		}
	}
	return out
}

// replaced is a configuration with stand-ins for its names and values,
// and how to read a stand-in back as what it stands for.
type replaced struct {
	table store.Table
	cols  store.Columns
	st    store.Statuses
	text  *strings.Replacer // stand-in names and values to the configured ones
	ints  map[string]string // stand-in integer statuses to the configured ones, unsigned
}

// standIns replaces each distinct column name by zqNNc, so that columns
// shared by roles stay shared, the table by zqschema.zqtable, and the
// status values by zqpending, zqdelivered and zqdead or, when they are
// integers, by integers of the same signs that nothing else spells.
func standIns(t store.Table, cols store.Columns, st store.Statuses) replaced {
	in := replaced{table: store.Table{Schema: "zqschema", Name: "zqtable"}, cols: store.Columns{}, ints: map[string]string{}}
	pairs := []string{"zqschema", t.Schema, "zqtable", t.Name}
	names := map[string]string{}
	for r, name := range cols {
		if names[name] == "" {
			names[name] = fmt.Sprintf("zq%02dc", len(names))
			pairs = append(pairs, names[name], name)
		}
		in.cols[r] = names[name]
	}
	values := []*string{&st.Pending, &st.Delivered, &st.Dead}
	ins := []*string{&in.st.Pending, &in.st.Delivered, &in.st.Dead}
	for i, v := range values {
		if !st.Integer() {
			*ins[i] = []string{"zqpending", "zqdelivered", "zqdead"}[i]
			pairs = append(pairs, *ins[i], *v)
			continue
		}
		n, _ := strconv.ParseInt(*v, 10, 32)
		stand := int64(1234561 + i)
		if n < 0 {
			stand = -stand
		}
		*ins[i] = strconv.FormatInt(stand, 10)
		in.ints[strconv.FormatInt(max(stand, -stand), 10)] = strconv.FormatInt(max(n, -n), 10)
	}
	in.text = strings.NewReplacer(pairs...)
	return in
}

// sameShape checks got against want, its form with stand-ins, lexed with
// standard_conforming_strings as scs says.
func sameShape(got, want string, scs bool, in replaced) error {
	g, err := lexSQL(got, scs)
	if err != nil {
		return err
	}
	w, err := lexSQL(want, scs)
	if err != nil {
		return fmt.Errorf("with stand-ins: %w", err)
	}
	if len(g) != len(w) {
		return fmt.Errorf("%d tokens, %d with stand-ins", len(g), len(w))
	}
	for i := range g {
		if err := sameToken(g[i], w[i], scs, in); err != nil {
			return fmt.Errorf("token %d: %w", i, err)
		}
	}
	return nil
}

func sameToken(g, w sqlToken, scs bool, in replaced) error {
	if g.kind != w.kind {
		return fmt.Errorf("%q where the stand-ins have %q", g.text, w.text)
	}
	want := w.text
	switch g.kind {
	case tokDollar: // the body of a DO block is SQL too
		if err := sameShape(g.text, w.text, scs, in); err != nil {
			return fmt.Errorf("in $$: %w", err)
		}
		return nil
	case tokString, tokIdent:
		want = in.text.Replace(w.text)
	case tokNumber:
		if v, ok := in.ints[w.text]; ok {
			want = v
		}
	}
	if g.text != want {
		return fmt.Errorf("holds %q, want %q", g.text, want)
	}
	return nil
}
