// Package monitor exposes what an operator watches: Prometheus metrics,
// the health endpoints, the periodic outbox and slot figures, and the slot
// guard that keeps a replication slot from filling the database's disk.
package monitor

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/outbox-relay/outbox-relay/internal/store"
	"github.com/outbox-relay/outbox-relay/relay"
	"github.com/outbox-relay/outbox-relay/sweeper"
)

// Metrics holds every outbox_relay_ metric. Labels carry paths, outcomes,
// roles and statuses only: never a URL, a table row or a secret.
type Metrics struct {
	Registry *prometheus.Registry

	deliveries      *prometheus.CounterVec
	requestDuration prometheus.Histogram
	eventAge        prometheus.Histogram

	// attempts holds deliveries' counters of the known paths and outcomes,
	// so that an attempt costs no label hashing and lock (ObserveAttempt).
	attempts map[[2]string]prometheus.Counter

	pending, oldestPending, dead prometheus.Gauge

	cdcEnabled prometheus.Gauge

	slotActive, slotRetained, slotLag prometheus.Gauge
	slotWALStatus                     *prometheus.GaugeVec
	slotRecreated                     prometheus.Counter

	writeErrors *prometheus.CounterVec

	traceContextInvalid *prometheus.CounterVec

	lastSweep, lastSweepDuration prometheus.Gauge
	retentionDeleted             prometheus.Counter

	blockedKeys prometheus.Gauge // nil unless rows are ordered per key
}

// NewMetrics registers the metrics on a fresh registry, with the Go and
// process collectors.
func NewMetrics() *Metrics {
	r := prometheus.NewRegistry()
	f := factory{r}
	latency := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	m := &Metrics{
		Registry: r,
		deliveries: f.counterVec("deliveries_total", "Delivery attempts by path (stream, sweep, next: the next row of an ordered key) and outcome (delivered, retry, dead).",
			"path", "outcome"),
		requestDuration: f.histogram("runner_request_duration_seconds", "Time of one POST to the runner, quick retries included.", latency),
		eventAge: f.histogram("event_age_seconds", "Time from created_at to delivery of the delivered events.",
			[]float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5, 15, 60, 300, 1800, 3600, 21600, 86400}),
		pending:       f.gauge("pending_rows", "Rows waiting for delivery."),
		oldestPending: f.gauge("oldest_pending_age_seconds", "Age of the oldest pending row; 0 when none."),
		dead:          f.gauge("dead_rows", "Rows the relay gave up on."),
		cdcEnabled:    f.gauge("cdc_enabled", "1 when the replication fast path is in use, 0 when the relay runs sweep-only."),
		slotActive:    f.gauge("slot_active", "1 when some process streams from the slot."),
		slotRetained:  f.gauge("slot_retained_wal_bytes", "WAL the slot keeps on disk: pg_current_wal_lsn() - restart_lsn."),
		slotLag:       f.gauge("slot_confirmed_flush_lag_bytes", "WAL not yet confirmed by the relay: pg_current_wal_lsn() - confirmed_flush_lsn."),
		slotWALStatus: f.gaugeVec("slot_wal_status", "1 for the slot's wal_status (reserved, extended, unreserved, lost).", "status"),
		slotRecreated: f.counter("slot_recreated_total", "Times the slot guard dropped the slot for retaining too much WAL."),
		lastSweep:     f.gauge("last_sweep_timestamp_seconds", "Unix time of the last sweep pass."),
		lastSweepDuration: f.gauge("last_sweep_duration_seconds",
			"Duration of the last sweep pass."),
		retentionDeleted: f.counter("retention_deleted_total", "Delivered rows deleted by retention."),
		writeErrors: f.counterVec("write_errors_total",
			"Writes the database refused, by statement (claim, record, release): of one row (a constraint, a trigger, row-level security), retried with backoff while the other rows flow, or of a whole statement refused whatever its rows (a revoked privilege), while claiming and sending wait.",
			"statement"),
		traceContextInvalid: f.counterVec("trace_context_invalid_total",
			"Trace context values of rows dropped as invalid W3C (the event is sent without them), by header (traceparent, tracestate).",
			"header"),
	}
	for _, h := range []string{relay.HeaderTraceparent, relay.HeaderTracestate} {
		m.traceContextInvalid.WithLabelValues(h) // present at 0 from the start
	}
	for _, s := range []string{relay.StatementClaim, relay.StatementRecord, relay.StatementRelease} {
		m.writeErrors.WithLabelValues(s) // present at 0 from the start
	}
	m.attempts = map[[2]string]prometheus.Counter{}
	for _, p := range []string{relay.PathStream, relay.PathSweep, relay.PathNext} {
		for _, o := range []string{relay.OutcomeDelivered, relay.OutcomeRetry, relay.OutcomeDead} {
			m.attempts[[2]string{p, o}] = m.deliveries.WithLabelValues(p, o) // present at 0 from the start
		}
	}
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObserveAttempt counts an attempt; it implements relay.Observer.
func (m *Metrics) ObserveAttempt(a relay.Attempt) {
	// The histograms first, the counter last: a scrape that sees an attempt
	// counted then also sees its duration and age, never a count ahead of them.
	if a.Duration > 0 {
		m.requestDuration.Observe(a.Duration.Seconds())
	}
	if a.Outcome == relay.OutcomeDelivered {
		m.eventAge.Observe(a.Age.Seconds())
	}
	if c, ok := m.attempts[[2]string{a.Path, a.Outcome}]; ok {
		c.Inc()
		return
	}
	m.deliveries.WithLabelValues(a.Path, a.Outcome).Inc()
}

// ObserveWriteError counts a write the database refused; it implements
// relay.Observer.
func (m *Metrics) ObserveWriteError(statement string) { m.writeErrors.WithLabelValues(statement).Inc() }

// ObserveTraceContextInvalid counts a trace context header dropped as
// invalid; it implements relay.Observer.
func (m *Metrics) ObserveTraceContextInvalid(header string) {
	m.traceContextInvalid.WithLabelValues(header).Inc()
}

// ObserveSweep records a sweep pass.
func (m *Metrics) ObserveSweep(p sweeper.Pass) {
	m.lastSweep.SetToCurrentTime()
	m.lastSweepDuration.Set(p.Took.Seconds())
}

func (m *Metrics) setStats(s store.Stats) {
	m.pending.Set(float64(s.Pending))
	m.dead.Set(float64(s.Dead))
	m.oldestPending.Set(s.OldestPending.Seconds())
	if s.Ordering != nil && m.blockedKeys != nil {
		m.blockedKeys.Set(float64(s.Ordering.BlockedKeys))
	}
}

// WatchOrdering exports the keys that wait, for a relay that delivers in
// order per key; the watcher refreshes it with the other outbox figures.
func (m *Metrics) WatchOrdering() {
	m.blockedKeys = factory{m.Registry}.gauge("ordering_blocked_keys",
		"Keys whose head row waits for a retry, or is dead under RELAY_ORDERING_ON_DEAD=block; their later rows wait too.")
}

// WatchCDC exports the stream's state, read at scrape time: it costs no
// SQL, and a role change shows at once rather than at the next refresh.
func (m *Metrics) WatchCDC(state func() CDCState) {
	m.cdcEnabled.Set(1)
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "cdc_connected", Help: "1 while the replication connection streams.",
	}, func() float64 { return b2f(state().Connected) }))
	for _, r := range []string{"streamer", "standby", "down", "unavailable"} {
		m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "cdc_role", ConstLabels: prometheus.Labels{"role": r},
			Help: "1 for the current role: streamer (holds the slot), standby, down, or unavailable (the server cannot stream: sweep-only).",
		}, func() float64 { return b2f(state().Role == r) }))
	}
}

// WatchRunner exports the runner breaker's state and the concurrency
// limit, read at scrape time from state: no cost on the delivery path.
func (m *Metrics) WatchRunner(state func() relay.RunnerState) {
	for _, s := range relay.RunnerStates {
		m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "runner_state", ConstLabels: prometheus.Labels{"state": s},
			Help: "1 for the runner breaker's state: closed (delivering), open (runner down, claiming paused) or probing (one probe in flight).",
		}, func() float64 { return b2f(state().State == s) }))
	}
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "runner_concurrency_limit",
		Help: "POSTs allowed in flight now: RELAY_CONCURRENCY, halved on 429 and 503, grown back by one per run of successes.",
	}, func() float64 { return float64(state().ConcurrencyLimit) }))
}

func (m *Metrics) setSlot(s store.Slot) {
	m.slotActive.Set(b2f(s.Active))
	m.slotRetained.Set(float64(s.RetainedBytes))
	m.slotLag.Set(float64(s.ConfirmedLagBytes))
	for _, st := range []string{"reserved", "extended", "unreserved", "lost"} {
		m.slotWALStatus.WithLabelValues(st).Set(b2f(s.WALStatus == st))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

type factory struct{ r *prometheus.Registry }

const namespace = "outbox_relay"

func (f factory) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
	f.r.MustRegister(c)
	return c
}

func (f factory) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help})
	f.r.MustRegister(c)
	return c
}

func (f factory) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help})
	f.r.MustRegister(g)
	return g
}

func (f factory) gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help}, labels)
	f.r.MustRegister(g)
	return g
}

func (f factory) histogram(name, help string, buckets []float64) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: name, Help: help, Buckets: buckets})
	f.r.MustRegister(h)
	return h
}

// AddRetentionDeleted counts rows deleted by retention.
func (m *Metrics) AddRetentionDeleted(n int64) { m.retentionDeleted.Add(float64(n)) }
