package deploy_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
)

const dashboardFile = "grafana/outbox-relay.json"

// The parts of Grafana's dashboard JSON model the test reads.
type (
	dashboard struct {
		Title      string `json:"title"`
		UID        string `json:"uid"`
		Templating struct {
			List []variable `json:"list"`
		} `json:"templating"`
		Panels []panel `json:"panels"`
	}
	dsRef struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	}
	variable struct {
		Name       string `json:"name"`
		Type       string `json:"type"`
		Datasource *dsRef `json:"datasource"`
		Definition string `json:"definition"`
		Query      any    `json:"query"` // a string, or an object with one (Prometheus' editor)
	}
	panel struct {
		ID         int    `json:"id"`
		Type       string `json:"type"`
		Title      string `json:"title"`
		Datasource *dsRef `json:"datasource"`
		GridPos    *struct{ H, W, X, Y int }
		Targets    []struct {
			Expr       string `json:"expr"`
			RefID      string `json:"refId"`
			Datasource *dsRef `json:"datasource"`
		} `json:"targets"`
		Panels      []panel `json:"panels"` // of a collapsed row
		FieldConfig struct {
			Defaults struct {
				Mappings []struct {
					Type    string `json:"type"`
					Options map[string]struct {
						Text string `json:"text"`
					} `json:"options"`
				} `json:"mappings"`
			} `json:"defaults"`
		} `json:"fieldConfig"`
	}
)

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// panelsOf lists every panel, those inside rows included.
func panelsOf(ps []panel) []panel {
	var all []panel
	for _, p := range ps {
		all = append(all, p)
		all = append(all, panelsOf(p.Panels)...)
	}
	return all
}

var grafanaVar = regexp.MustCompile(`\$(?:\{(\w+)(?::\w+)?\}|(\w+))`)

// expandVars replaces Grafana's variables so that Prometheus' parser can
// read the expression: the interval macros by a duration, the
// dashboard's own variables by a marker (__var_name__), which a label
// matcher can be checked for. Any other variable is an error.
func expandVars(t *testing.T, expr string, defined []string) string {
	t.Helper()
	return grafanaVar.ReplaceAllStringFunc(expr, func(m string) string {
		sub := grafanaVar.FindStringSubmatch(m)
		name := sub[1] + sub[2]
		switch {
		case name == "__rate_interval" || name == "__interval" || name == "__range":
			return "5m"
		case slices.Contains(defined, name):
			return "__var_" + name + "__"
		}
		t.Errorf("%s uses $%s, which the dashboard does not define", expr, name)
		return m
	})
}

// dashboardSeries are what the dashboard must show, one series at least
// for each.
var dashboardSeries = []string{
	"outbox_relay_deliveries_total",
	"outbox_relay_event_age_seconds_bucket",
	"outbox_relay_runner_request_duration_seconds_bucket",
	"outbox_relay_pending_rows",
	"outbox_relay_dead_rows",
	"outbox_relay_oldest_pending_age_seconds",
	"outbox_relay_slot_retained_wal_bytes",
	"outbox_relay_slot_confirmed_flush_lag_bytes",
	"outbox_relay_cdc_role",
	"outbox_relay_last_sweep_timestamp_seconds",
	"outbox_relay_last_sweep_duration_seconds",
}

func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.Title == "" || d.UID == "" {
		t.Errorf("title %q, uid %q: both are needed to import and link it", d.Title, d.UID)
	}
	exported := exportedSeries(t)
	defined := checkVariables(t, d, exported)

	used := map[string]bool{}
	ids := map[int]string{}
	for _, p := range panelsOf(d.Panels) {
		if other, dup := ids[p.ID]; dup {
			t.Errorf("panels %q and %q share id %d", other, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		if p.Type == "row" {
			continue
		}
		if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 {
			t.Errorf("panel %q has no place on the grid", p.Title)
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: data source %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Datasource != nil && tg.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q, query %s: data source %+v, want ${datasource}", p.Title, tg.RefID, tg.Datasource)
			}
			expr := expandVars(t, tg.Expr, defined)
			for _, m := range metricNames(t, expr) {
				used[m] = true
				if !exported[m] {
					t.Errorf("panel %q uses %s, which the relay does not export", p.Title, m)
				}
			}
			checkInstanceFilter(t, p.Title, expr)
		}
	}
	for _, m := range dashboardSeries {
		if !used[m] {
			t.Errorf("no panel shows %s", m)
		}
	}
}

// checkVariables checks the data source and instance variables and
// returns the names of all.
func checkVariables(t *testing.T, d dashboard, exported map[string]bool) []string {
	t.Helper()
	var names []string
	for _, v := range d.Templating.List {
		names = append(names, v.Name)
		switch v.Name {
		case "datasource":
			if v.Type != "datasource" || v.Query != "prometheus" {
				t.Errorf("variable datasource: type %q, query %v; want a Prometheus data source variable", v.Type, v.Query)
			}
		case "instance":
			if v.Type != "query" || v.Datasource == nil || v.Datasource.UID != "${datasource}" {
				t.Errorf("variable instance: type %q, data source %+v; want a query on ${datasource}", v.Type, v.Datasource)
			}
			m := regexp.MustCompile(`^label_values\((\w+), instance\)$`).FindStringSubmatch(v.Definition)
			if m == nil || !exported[m[1]] {
				t.Errorf("variable instance: %q should list the instances of a metric the relay exports", v.Definition)
			}
			if q, ok := v.Query.(map[string]any); ok && q["query"] != v.Definition {
				t.Errorf("variable instance: query %v differs from its definition %q", q["query"], v.Definition)
			}
		}
	}
	for _, want := range []string{"datasource", "instance"} {
		if !slices.Contains(names, want) {
			t.Errorf("the dashboard has no %s variable; it has %v", want, names)
		}
	}
	return names
}

// checkInstanceFilter checks that every relay series a query selects is
// narrowed by the instance variable, so that choosing instances narrows
// every panel.
func checkInstanceFilter(t *testing.T, title, expr string) {
	t.Helper()
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return // metricNames has said so
	}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok || !strings.HasPrefix(vs.Name, "outbox_relay_") {
			return nil
		}
		if !slices.ContainsFunc(vs.LabelMatchers, func(m *labels.Matcher) bool {
			return m.Name == "instance" && m.Type == labels.MatchRegexp && m.Value == "__var_instance__"
		}) {
			t.Errorf("panel %q: %s is not narrowed by instance=~\"$instance\"", title, vs)
		}
		return nil
	})
}

// The stream role panel folds four series into one number per instance:
// evaluate it with the PromQL engine for a streamer, a standby, one that
// is down and a sweep-only relay.
func TestDashboardStreamRole(t *testing.T) {
	d := loadDashboard(t)
	i := slices.IndexFunc(panelsOf(d.Panels), func(p panel) bool { return p.Title == "Stream role per instance" })
	if i < 0 {
		t.Fatal("no panel \"Stream role per instance\"")
	}
	p := panelsOf(d.Panels)[i]
	if len(p.Targets) != 1 {
		t.Fatalf("the stream role panel has %d queries, want 1", len(p.Targets))
	}
	expr := expandVars(t, p.Targets[0].Expr, []string{"instance", "datasource"})
	// The variable's All value.
	expr = strings.ReplaceAll(expr, "__var_instance__", ".+")

	var series []storage.Series
	add := func(name, instance string, value float64, kv ...string) {
		series = append(series, newSeries(name, labelsWith(labels.FromStrings("instance", instance), kv...), floatSample{t: epoch.UnixMilli(), f: value}))
	}
	roles := map[string]string{"a": "streamer", "b": "standby", "c": "down"}
	for inst, role := range roles {
		add("outbox_relay_cdc_enabled", inst, 1)
		for _, r := range []string{"streamer", "standby", "down"} {
			add("outbox_relay_cdc_role", inst, b2f(r == role), "role", r)
		}
	}
	add("outbox_relay_cdc_enabled", "d", 0)

	got := map[string]float64{}
	for _, s := range evalInstant(t, newEngine(10_000), series, expr, epoch) {
		got[s.Metric.Get("instance")] = s.F
	}
	want := map[string]float64{"a": 2, "b": 1, "c": 0, "d": -1} // the panel's value mappings
	if len(got) != len(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for inst, v := range want {
		if g, ok := got[inst]; !ok || g != v {
			t.Errorf("instance %s (%s): %v, want %v", inst, roles[inst], g, v)
		}
	}
	// What the panel shows for each value.
	shown := map[string]string{}
	for _, m := range p.FieldConfig.Defaults.Mappings {
		for v, o := range m.Options {
			if m.Type == "value" {
				shown[v] = o.Text
			}
		}
	}
	for v, text := range map[string]string{"2": "streamer", "1": "standby", "0": "down", "-1": "sweep-only"} {
		if shown[v] != text {
			t.Errorf("the stream role panel shows value %s as %q, want %q", v, shown[v], text)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
