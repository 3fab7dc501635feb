package deploy_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"

	"github.com/outbox-relay/outbox-relay/internal/monitor"
)

// What the alert rules and the dashboard's queries are checked with: the
// series the relay exports, the names a query selects, and the real PromQL
// engine over series held in memory.

// metricNames lists the metric names an expression selects.
func metricNames(t *testing.T, expr string) []string {
	t.Helper()
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			name := vs.Name
			for _, m := range vs.LabelMatchers {
				if m.Name == model.MetricNameLabel {
					if m.Type != labels.MatchEqual {
						t.Errorf("%s: select metrics by exact name, not %s", expr, m)
					}
					name = m.Value
				}
			}
			names = append(names, name)
		}
		return nil
	})
	return names
}

// exportedSeries lists the series names the relay exports. Every relay
// metric a query uses must be one the relay really registers: ask the
// metrics package, not a list. A histogram is queried by its _bucket,
// _sum and _count series; the stream's gauges exist only while a stream
// runs, so a stand-in stream registers them here.
func exportedSeries(t *testing.T) map[string]bool {
	t.Helper()
	m := monitor.NewMetrics()
	m.WatchCDC(func() monitor.CDCState { return monitor.CDCState{} })
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, mf := range mfs {
		name := mf.GetName()
		switch mf.GetType().String() {
		case "HISTOGRAM":
			exported[name+"_bucket"], exported[name+"_sum"], exported[name+"_count"] = true, true, true
		case "SUMMARY":
			exported[name], exported[name+"_sum"], exported[name+"_count"] = true, true, true
		default:
			exported[name] = true
		}
	}
	return exported
}

// epoch is the fixed instant the tests' series start at.
var epoch = time.Unix(1_700_000_000, 0)

// newEngine is the PromQL engine with Prometheus' 5-minute lookback, at
// most maxSamples samples a query.
func newEngine(maxSamples int) *promql.Engine {
	return promql.NewEngine(promql.EngineOpts{MaxSamples: maxSamples, Timeout: 10 * time.Second, LookbackDelta: 5 * time.Minute})
}

// newSeries is the series of the metric name with the labels lset,
// holding samples.
func newSeries(name string, lset labels.Labels, samples ...chunks.Sample) storage.Series {
	lb := labels.NewBuilder(lset)
	lb.Set(model.MetricNameLabel, name)
	return storage.NewListSeries(lb.Labels(), samples)
}

// evalInstant evaluates expr at at over series with the real PromQL engine.
func evalInstant(t *testing.T, engine *promql.Engine, series []storage.Series, expr string, at time.Time) promql.Vector {
	t.Helper()
	q, err := engine.NewInstantQuery(context.Background(), memQueryable(series), nil, expr, at)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	res := q.Exec(context.Background())
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	vec, err := res.Vector()
	if err != nil {
		t.Fatal(err)
	}
	return vec
}

func labelsWith(l labels.Labels, kv ...string) labels.Labels {
	b := labels.NewBuilder(l)
	for i := 0; i+1 < len(kv); i += 2 {
		b.Set(kv[i], kv[i+1])
	}
	return b.Labels()
}

// floatSample is a plain float sample for storage.NewListSeries.
type floatSample struct {
	t int64
	f float64
}

func (s floatSample) T() int64                      { return s.t }
func (s floatSample) ST() int64                     { return 0 }
func (s floatSample) F() float64                    { return s.f }
func (s floatSample) H() *histogram.Histogram       { return nil }
func (s floatSample) FH() *histogram.FloatHistogram { return nil }
func (s floatSample) Type() chunkenc.ValueType      { return chunkenc.ValFloat }
func (s floatSample) Copy() chunks.Sample           { return s }

// memQueryable serves a fixed set of series to the PromQL engine.
func memQueryable(all []storage.Series) storage.Queryable {
	return &storage.MockQueryable{MockQuerier: &storage.MockQuerier{
		SelectMockFunction: func(_ bool, _ *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
			var out []storage.Series
			for _, s := range all {
				lset := s.Labels()
				if !slices.ContainsFunc(ms, func(m *labels.Matcher) bool { return !m.Matches(lset.Get(m.Name)) }) {
					out = append(out, s)
				}
			}
			slices.SortFunc(out, func(x, y storage.Series) int {
				return labels.Compare(x.Labels(), y.Labels())
			})
			return &seriesSet{series: out, i: -1}
		},
	}}
}

type seriesSet struct {
	series []storage.Series
	i      int
}

func (s *seriesSet) Next() bool                        { s.i++; return s.i < len(s.series) }
func (s *seriesSet) At() storage.Series                { return s.series[s.i] }
func (s *seriesSet) Err() error                        { return nil }
func (s *seriesSet) Warnings() annotations.Annotations { return nil }
