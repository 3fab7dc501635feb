package store_test

import (
	"errors"
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

// tokenKind is what a token of a statement is to the server's lexer.
type tokenKind int

const (
	tokWord    tokenKind = iota // a keyword or an unquoted identifier
	tokIdent                    // a quoted identifier; text is the name
	tokString                   // a string literal; text is its value
	tokNumber                   // a numeric constant
	tokParam                    // $1
	tokOp                       // one operator character
	tokPunct                    // ( ) [ ] , ; . :
	tokComment                  // -- or /* */, with its delimiters
	tokDollar                   // a dollar-quoted string; text is the body
)

type sqlToken struct {
	kind tokenKind
	text string
}

// lexSQL splits sql into tokens as PostgreSQL's lexer reads what the store
// writes, with standard_conforming_strings on or off as scs says: off, a
// backslash in a plain literal escapes as in an escape string (E'…').
// It refuses what the store never writes (bit, hex, national and Unicode
// strings, an empty quoted identifier, a lone $, a vertical tab) and
// anything left open at the end, so that a value which escaped its literal
// and made one of them fails the check rather than being read some third
// way.
func lexSQL(sql string, scs bool) ([]sqlToken, error) {
	var out []sqlToken
	for i := 0; i < len(sql); {
		c, next := sql[i], byte(0)
		if i+1 < len(sql) {
			next = sql[i+1]
		}
		tok, n, err := lexOne(sql[i:], c, next, scs)
		if err != nil {
			return nil, fmt.Errorf("at byte %d: %w", i, err)
		}
		if tok != nil {
			out = append(out, *tok)
		}
		i += n
	}
	return out, nil
}

// lexOne reads the token at the start of s (c and next are its first two
// bytes); a nil token is white space.
func lexOne(s string, c, next byte, scs bool) (*sqlToken, int, error) {
	switch {
	case strings.IndexByte(" \t\n\r\f", c) >= 0:
		return nil, 1, nil
	case strings.HasPrefix(s, "--"):
		n := strings.IndexAny(s, "\n\r")
		if n < 0 {
			n = len(s)
		}
		return &sqlToken{tokComment, s[:n]}, n, nil
	case strings.HasPrefix(s, "/*"):
		n, err := blockComment(s)
		return &sqlToken{tokComment, s[:n]}, n, err
	case c == '\'':
		v, n, err := lexQuoted(s[1:], '\'', !scs)
		return &sqlToken{tokString, v}, 1 + n, err
	case (c == 'e' || c == 'E') && next == '\'':
		v, n, err := lexQuoted(s[2:], '\'', true)
		return &sqlToken{tokString, v}, 2 + n, err
	case strings.IndexByte("bBxXnN", c) >= 0 && next == '\'', (c == 'u' || c == 'U') && next == '&':
		return nil, 0, errors.New("a bit, hex, national or Unicode literal")
	case c == '"':
		v, n, err := lexQuoted(s[1:], '"', false)
		if err == nil && v == "" {
			err = errors.New("a zero-length quoted identifier")
		}
		return &sqlToken{tokIdent, v}, 1 + n, err
	case c == '$':
		return lexDollar(s)
	case isIdentStart(c):
		n := 1
		for n < len(s) && (isIdentStart(s[n]) || isDigit(s[n]) || s[n] == '$') {
			n++
		}
		return &sqlToken{tokWord, s[:n]}, n, nil
	case isDigit(c) || c == '.' && isDigit(next):
		n := lexNumber(s)
		return &sqlToken{tokNumber, s[:n]}, n, nil
	case strings.IndexByte("~!@#^&|`?+-*/%<>=", c) >= 0:
		return &sqlToken{tokOp, s[:1]}, 1, nil
	case strings.IndexByte("()[],;.:", c) >= 0:
		return &sqlToken{tokPunct, s[:1]}, 1, nil
	}
	return nil, 0, fmt.Errorf("unexpected byte %q", c)
}

func isIdentStart(c byte) bool { return c == '_' || c >= 0x80 || (c|0x20) >= 'a' && (c|0x20) <= 'z' }
func isDigit(c byte) bool      { return c >= '0' && c <= '9' }

// blockComment is the length of the comment at the start of s; they nest.
func blockComment(s string) (int, error) {
	depth := 0
	for i := 0; i+1 < len(s); i++ {
		switch s[i : i+2] {
		case "/*":
			depth++
			i++
		case "*/":
			depth--
			i++
			if depth == 0 {
				return i + 1, nil
			}
		}
	}
	return 0, errors.New("an unterminated comment")
}

// lexQuoted reads a quoted string or identifier whose opening quote q is
// just before s: its value and the bytes it took, the closing quote
// included. A doubled quote stands for itself; with escapes, so does a
// backslash sequence.
func lexQuoted(s string, q byte, escapes bool) (string, int, error) {
	var b strings.Builder
	for i := 0; i < len(s); {
		switch {
		case s[i] == q && i+1 < len(s) && s[i+1] == q:
			b.WriteByte(q)
			i += 2
		case s[i] == q:
			return b.String(), i + 1, nil
		case s[i] == '\\' && escapes:
			n, err := unescape(&b, s[i+1:])
			if err != nil {
				return "", 0, err
			}
			i += 1 + n
		default:
			b.WriteByte(s[i])
			i++
		}
	}
	return "", 0, fmt.Errorf("an unterminated %c", q)
}

// unescape writes the value of the backslash sequence at the start of s
// (after the backslash) and returns the bytes it took.
func unescape(b *strings.Builder, s string) (int, error) {
	if s == "" {
		return 0, errors.New("a backslash at the end")
	}
	digits := func(max int, ok func(byte) bool) string {
		n := 0
		for n < max && n < len(s)-1 && ok(s[1+n]) {
			n++
		}
		return s[1 : 1+n]
	}
	isHex := func(c byte) bool { return isDigit(c) || (c|0x20) >= 'a' && (c|0x20) <= 'f' }
	switch c := s[0]; {
	case strings.IndexByte("bfnrt", c) >= 0:
		b.WriteByte("\b\f\n\r\t"[strings.IndexByte("bfnrt", c)])
	case c >= '0' && c <= '7':
		d := s[:1] + digits(2, func(c byte) bool { return c >= '0' && c <= '7' })
		v, _ := strconv.ParseUint(d, 8, 16)
		b.WriteByte(byte(v))
		return len(d), nil
	case c == 'x' && len(digits(2, isHex)) > 0:
		d := digits(2, isHex)
		v, _ := strconv.ParseUint(d, 16, 8)
		b.WriteByte(byte(v))
		return 1 + len(d), nil
	case c == 'u' || c == 'U':
		n := map[byte]int{'u': 4, 'U': 8}[c]
		d := digits(n, isHex)
		v, _ := strconv.ParseUint(d, 16, 32)
		if len(d) != n || !utf8.ValidRune(rune(v)) || v == 0 {
			return 0, errors.New("an invalid Unicode escape")
		}
		b.WriteRune(rune(v))
		return 1 + n, nil
	default:
		b.WriteByte(c)
	}
	return 1, nil
}

// lexDollar reads a parameter ($1) or a dollar-quoted string ($tag$…$tag$).
func lexDollar(s string) (*sqlToken, int, error) {
	n := 1
	for n < len(s) && isDigit(s[n]) {
		n++
	}
	if n > 1 {
		return &sqlToken{tokParam, s[:n]}, n, nil
	}
	for n < len(s) && (isIdentStart(s[n]) || n > 1 && isDigit(s[n])) {
		n++
	}
	if n == len(s) || s[n] != '$' {
		return nil, 0, errors.New("a lone $")
	}
	delim := s[:n+1]
	end := strings.Index(s[len(delim):], delim)
	if end < 0 {
		return nil, 0, errors.New("an unterminated dollar quote")
	}
	return &sqlToken{tokDollar, s[len(delim) : len(delim)+end]}, 2*len(delim) + end, nil
}

// lexNumber is the length of the numeric constant at the start of s.
func lexNumber(s string) int {
	n := 0
	for n < len(s) && isDigit(s[n]) {
		n++
	}
	if n < len(s) && s[n] == '.' {
		for n++; n < len(s) && isDigit(s[n]); n++ {
		}
	}
	if n+1 < len(s) && (s[n]|0x20) == 'e' {
		m := n + 1
		if s[m] == '+' || s[m] == '-' {
			m++
		}
		if m < len(s) && isDigit(s[m]) {
			for n = m; n < len(s) && isDigit(s[n]); n++ {
			}
		}
	}
	return n
}

// The lexer reads literals as the server does with either setting, and
// refuses what it does not know.
func TestLexSQL(t *testing.T) {
	t.Parallel()
	show := func(toks []sqlToken) string {
		var s []string
		for _, tk := range toks {
			s = append(s, fmt.Sprintf("%d:%s", tk.kind, tk.text))
		}
		return strings.Join(s, " ")
	}
	for _, tc := range []struct {
		sql  string
		scs  bool
		want string // "" when refused
	}{
		{`x = 'a''b' AND "c""d" = $1::int`, true, `0:x 5:= 2:a'b 0:AND 1:c"d 5:= 4:$1 6:: 6:: 0:int`},
		{`'a\' OR 1=1 --'`, true, `2:a\ 0:OR 3:1 5:= 3:1 7:--'`},
		{`'a\' OR 1=1 --'`, false, `2:a' OR 1=1 --`},
		{`'a\'' OR 1=1`, false, `2:a' 0:OR 3:1 5:= 3:1`},
		{`E'\\\'\x41\101\u00e9\q'`, true, `2:\'AAéq`},
		{`DO $$ BEGIN x; END $$ /* a /* b */ */ -1.5e3`, true, `0:DO 8: BEGIN x; END  7:/* a /* b */ */ 5:- 3:1.5e3`},
		{`$tag$ it's $$ $tag$`, true, `8: it's $$ `},
		{`B'101'`, true, ""},
		{`U&'d\0061t'`, true, ""},
		{`""`, true, ""},
		{`$ 1`, true, ""},
		{"a\vb", true, ""},
		{`'open`, true, ""},
		{`/* open`, true, ""},
	} {
		toks, err := lexSQL(tc.sql, tc.scs)
		if got := show(toks); (err == nil) != (tc.want != "") || got != tc.want {
			t.Errorf("lexSQL(%q, scs %v) = %s, %v; want %s", tc.sql, tc.scs, got, err, tc.want)
		}
	}
}
