package deploy_test

import (
	"io"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunks"
)

const alertsFile = "prometheus/alerts.yaml"

// relayMetrics are the metric names the relay exports; the alerts may use
// these and Prometheus' own `up`, nothing else.
var relayMetrics = []string{
	"outbox_relay_deliveries_total",
	"outbox_relay_runner_request_duration_seconds",
	"outbox_relay_event_age_seconds",
	"outbox_relay_pending_rows",
	"outbox_relay_oldest_pending_age_seconds",
	"outbox_relay_dead_rows",
	"outbox_relay_cdc_enabled",
	"outbox_relay_cdc_connected",
	"outbox_relay_cdc_role",
	"outbox_relay_slot_active",
	"outbox_relay_slot_retained_wal_bytes",
	"outbox_relay_slot_confirmed_flush_lag_bytes",
	"outbox_relay_slot_wal_status",
	"outbox_relay_slot_recreated_total",
	"outbox_relay_last_sweep_timestamp_seconds",
	"outbox_relay_last_sweep_duration_seconds",
	"outbox_relay_retention_deleted_total",
	"outbox_relay_ordering_blocked_keys",
}

var wantAlerts = []string{
	"OutboxRelaySlotRetainedWALHigh",
	"OutboxRelaySlotInactive",
	"OutboxRelayOldestPendingTooOld",
	"OutboxRelayDeadLettersGrowing",
	"OutboxRelayDown",
}

// loadRules parses the rule file with Prometheus' own parser, which also
// checks every expression and annotation template.
func loadRules(t *testing.T) []rulefmt.Rule {
	t.Helper()
	p := parser.NewParser(parser.Options{})
	groups, errs := rulefmt.ParseFile(alertsFile, false, model.LegacyValidation, p, slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, err := range errs {
		t.Errorf("rulefmt: %v", err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
	var rules []rulefmt.Rule
	for _, g := range groups.Groups {
		rules = append(rules, g.Rules...)
	}
	return rules
}

var runbookLink = regexp.MustCompile(`deploy/README\.md#([a-z0-9-]+)`)

// readmeAnchors lists the anchors of deploy/README.md's headings, as
// GitHub makes them: lower case, spaces to hyphens, punctuation dropped.
func readmeAnchors(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	var anchors []string
	for line := range strings.Lines(string(b)) {
		if title, ok := strings.CutPrefix(strings.TrimSpace(line), "#"); ok {
			title = strings.ToLower(strings.TrimSpace(strings.TrimLeft(title, "#")))
			title = strings.ReplaceAll(title, " ", "-")
			anchors = append(anchors, regexp.MustCompile(`[^a-z0-9_-]`).ReplaceAllString(title, ""))
		}
	}
	return anchors
}

func TestAlertRules(t *testing.T) {
	rules := loadRules(t)

	exported := exportedSeries(t)

	anchors := readmeAnchors(t)
	var names []string
	for _, r := range rules {
		if r.Alert == "" {
			t.Errorf("recording rule %q: this file holds alerts only", r.Record)
			continue
		}
		names = append(names, r.Alert)
		for _, m := range metricNames(t, r.Expr) {
			switch {
			case m == "up":
			case !slices.Contains(relayMetrics, m):
				t.Errorf("%s uses %s, which is not an outbox-relay metric", r.Alert, m)
			case !exported[m]:
				t.Errorf("%s uses %s, which internal/monitor does not register", r.Alert, m)
			}
		}
		switch r.Labels["severity"] {
		case "warning", "critical":
		default:
			t.Errorf("%s: severity %q, want warning or critical", r.Alert, r.Labels["severity"])
		}
		for _, a := range []string{"summary", "description"} {
			if r.Annotations[a] == "" {
				t.Errorf("%s: no %s annotation", r.Alert, a)
			}
		}
		if !strings.Contains(r.Annotations["description"], "Runbook: docs/operations.md") {
			t.Errorf("%s: the description should point to the runbook (docs/operations.md)", r.Alert)
		}
		if m := runbookLink.FindStringSubmatch(r.Annotations["description"]); m == nil {
			t.Errorf("%s: the description has no deploy/README.md#entry link", r.Alert)
		} else if !slices.Contains(anchors, m[1]) {
			t.Errorf("%s: deploy/README.md has no heading for #%s; it has %v", r.Alert, m[1], anchors)
		}
	}
	for _, want := range wantAlerts {
		if !slices.Contains(names, want) {
			t.Errorf("alert %s is missing; have %v", want, names)
		}
	}

	// The hold times are part of the design: a slot that is briefly busy
	// or a scrape that fails once must not page anyone.
	wantFor := map[string]time.Duration{
		"OutboxRelaySlotRetainedWALHigh": 10 * time.Minute,
		"OutboxRelaySlotInactive":        5 * time.Minute,
		"OutboxRelayOldestPendingTooOld": 5 * time.Minute,
		"OutboxRelayDown":                2 * time.Minute,
	}
	for _, r := range rules {
		if want, ok := wantFor[r.Alert]; ok && time.Duration(r.For) != want {
			t.Errorf("%s: for %s, want %s", r.Alert, time.Duration(r.For), want)
		}
	}
}

// The alert expressions evaluated by the real PromQL engine over made-up
// series: each alert fires on the situation it is for, and not on the
// nearby ones that are fine.
func TestAlertExpressions(t *testing.T) {
	exprs := map[string]string{}
	for _, r := range loadRules(t) {
		exprs[r.Alert] = r.Expr
	}
	const mib = 1 << 20
	a := labels.FromStrings("job", "outbox-relay", "instance", "a:9898")
	b := labels.FromStrings("job", "outbox-relay", "instance", "b:9898")
	flat := func(v float64) func(time.Duration) float64 { return func(time.Duration) float64 { return v } }
	// step is 0 before at and v from then on.
	step := func(at time.Duration, before, v float64) func(time.Duration) float64 {
		return func(d time.Duration) float64 {
			if d < at {
				return before
			}
			return v
		}
	}
	type ser struct {
		name string
		lset labels.Labels
		f    func(time.Duration) float64
	}
	cases := []struct {
		alert  string
		name   string
		series []ser
		fires  []string // instances expected in the result
	}{
		{"OutboxRelaySlotRetainedWALHigh", "over 256 MiB",
			[]ser{{"outbox_relay_slot_retained_wal_bytes", a, flat(300 * mib)}}, []string{"a:9898"}},
		{"OutboxRelaySlotRetainedWALHigh", "under 256 MiB",
			[]ser{{"outbox_relay_slot_retained_wal_bytes", a, flat(200 * mib)}}, nil},

		{"OutboxRelaySlotInactive", "inactive with cdc enabled",
			[]ser{{"outbox_relay_slot_active", a, flat(0)}, {"outbox_relay_cdc_enabled", a, flat(1)}}, []string{"a:9898"}},
		{"OutboxRelaySlotInactive", "sweep-only relay",
			[]ser{{"outbox_relay_slot_active", a, flat(0)}, {"outbox_relay_cdc_enabled", a, flat(0)}}, nil},
		{"OutboxRelaySlotInactive", "active",
			[]ser{{"outbox_relay_slot_active", a, flat(1)}, {"outbox_relay_cdc_enabled", a, flat(1)}}, nil},
		{"OutboxRelaySlotInactive", "another relay's cdc does not arm a sweep-only one",
			[]ser{
				{"outbox_relay_slot_active", a, flat(0)}, {"outbox_relay_cdc_enabled", a, flat(0)},
				{"outbox_relay_slot_active", b, flat(1)}, {"outbox_relay_cdc_enabled", b, flat(1)},
			}, nil},

		{"OutboxRelayOldestPendingTooOld", "six minutes",
			[]ser{{"outbox_relay_oldest_pending_age_seconds", a, flat(360)}}, []string{"a:9898"}},
		{"OutboxRelayOldestPendingTooOld", "one minute",
			[]ser{{"outbox_relay_oldest_pending_age_seconds", a, flat(60)}}, nil},

		{"OutboxRelayDeadLettersGrowing", "a row went dead half an hour ago",
			[]ser{
				{"outbox_relay_deliveries_total", labelsWith(a, "path", "sweep", "outcome", "dead"), step(90*time.Minute, 0, 1)},
				{"outbox_relay_deliveries_total", labelsWith(a, "path", "stream", "outcome", "dead"), flat(0)},
			}, []string{"a:9898"}},
		{"OutboxRelayDeadLettersGrowing", "old dead rows, none new",
			[]ser{{"outbox_relay_deliveries_total", labelsWith(a, "path", "sweep", "outcome", "dead"), flat(7)}}, nil},
		{"OutboxRelayDeadLettersGrowing", "a restart resets the counter",
			[]ser{{"outbox_relay_deliveries_total", labelsWith(a, "path", "sweep", "outcome", "dead"), step(90*time.Minute, 7, 0)}}, nil},
		{"OutboxRelayDeadLettersGrowing", "a requeue lowers the dead_rows gauge",
			[]ser{
				{"outbox_relay_deliveries_total", labelsWith(a, "path", "sweep", "outcome", "dead"), flat(7)},
				{"outbox_relay_dead_rows", a, step(90*time.Minute, 7, 2)},
			}, nil},
		{"OutboxRelayDeadLettersGrowing", "retries are not dead letters",
			[]ser{{"outbox_relay_deliveries_total", labelsWith(a, "path", "sweep", "outcome", "retry"), step(90*time.Minute, 0, 40)}}, nil},

		{"OutboxRelayDown", "scrape fails",
			[]ser{{"up", a, flat(0)}, {"up", b, flat(1)}}, []string{"a:9898"}},
		{"OutboxRelayDown", "another job's target",
			[]ser{{"up", labels.FromStrings("job", "node", "instance", "a:9100"), flat(0)}}, nil},
	}

	// Two hours of samples every 15s; the alerts are evaluated at the end.
	const span, every = 2 * time.Hour, 15 * time.Second
	engine := newEngine(1_000_000)
	for _, c := range cases {
		t.Run(c.alert+"/"+c.name, func(t *testing.T) {
			expr, ok := exprs[c.alert]
			if !ok {
				t.Fatalf("no alert %s", c.alert)
			}
			var series []storage.Series
			for _, s := range c.series {
				var samples []chunks.Sample
				for d := time.Duration(0); d <= span; d += every {
					samples = append(samples, floatSample{t: epoch.Add(d).UnixMilli(), f: s.f(d)})
				}
				series = append(series, newSeries(s.name, s.lset, samples...))
			}
			vec := evalInstant(t, engine, series, expr, epoch.Add(span))
			var got []string
			for _, s := range vec {
				got = append(got, s.Metric.Get("instance"))
			}
			slices.Sort(got)
			if !slices.Equal(got, c.fires) {
				t.Errorf("%s fired for %v, want %v\nexpr: %s\nresult: %v", c.alert, got, c.fires, expr, vec)
			}
		})
	}
}
