// Package config owns the relay's settings: it reads RELAY_* from the
// environment, here and nowhere else, validates them and returns them
// parsed, so that no component parses a setting again.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outbox-relay/outbox-relay/internal/store"
)

// Prefix is put in front of every variable name.
const Prefix = "RELAY_"

// Config is every setting of the relay. The help tag is what --help prints.
type Config struct {
	DatabaseURL  string `env:"DATABASE_URL" help:"PostgreSQL URL (postgres://user:pass@host:port/db); required"`
	RunnerURL    string `env:"RUNNER_URL" help:"absolute http(s) URL the events are POSTed to; required by run"`
	RunnerSecret string `env:"RUNNER_SECRET" help:"Standard Webhooks signing secret (whsec_<base64>); empty disables signing"`
	RunnerToken  string `env:"RUNNER_TOKEN" help:"bearer token sent as Authorization; empty sends none"`

	OutboxTable string `env:"OUTBOX_TABLE" envDefault:"public.portal_event_outbox" help:"outbox table, optionally schema-qualified"`
	SlotName    string `env:"SLOT_NAME" envDefault:"outbox_relay" help:"logical replication slot"`
	Publication string `env:"PUBLICATION" envDefault:"outbox_relay" help:"publication of the outbox table (its inserts, updates and deletes)"`
	CDC         string `env:"CDC" envDefault:"auto" help:"replication fast path: auto (use it when possible), on (required), off (sweep only)"`

	SweepInterval time.Duration `env:"SWEEP_INTERVAL" envDefault:"5s" help:"time between sweeps of due rows"`
	BackoffBase   time.Duration `env:"BACKOFF_BASE" envDefault:"1s" help:"delay before the first retry; doubles per attempt"`
	BackoffMax    time.Duration `env:"BACKOFF_MAX" envDefault:"10m" help:"cap on the retry delay"`
	BackoffJitter float64       `env:"BACKOFF_JITTER" envDefault:"0.2" help:"fraction in [0,1] taken off a retry delay at random"`
	MaxAttempts   int           `env:"MAX_ATTEMPTS" envDefault:"25" help:"attempts before a row is marked dead"`
	HTTPTimeout   time.Duration `env:"HTTP_TIMEOUT" envDefault:"10s" help:"timeout of one POST to the runner"`
	Concurrency   int           `env:"CONCURRENCY" envDefault:"16" help:"POSTs in flight for the whole process"`
	ProbeMax      time.Duration `env:"RUNNER_PROBE_MAX" envDefault:"5s" help:"longest wait between probes of a runner that is down (1s at first, doubling)"`
	BatchSize     int           `env:"BATCH_SIZE" envDefault:"100" help:"rows claimed per sweep query and ids per stream hand-off"`
	ListenAddr    string        `env:"LISTEN_ADDR" envDefault:":9898" help:"address of /healthz, /readyz and /metrics; off disables"`
	LogLevel      string        `env:"LOG_LEVEL" envDefault:"info" help:"debug, info, warn or error"`
	LogFormat     string        `env:"LOG_FORMAT" envDefault:"json" help:"json or text"`
	ShutdownGrace time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"30s" help:"time in-flight deliveries get to finish on SIGTERM"`
	SlotWarnBytes int64         `env:"SLOT_WARN_BYTES" envDefault:"268435456" help:"retained WAL of the slot that logs a warning"`
	SlotMaxBytes  int64         `env:"SLOT_MAX_BYTES" envDefault:"2147483648" help:"retained WAL past which the slot is dropped and recreated"`
	Retention     time.Duration `env:"RETENTION" envDefault:"168h" help:"delivered rows older than this are deleted; 0 keeps them"`
	StatsInterval time.Duration `env:"STATS_INTERVAL" envDefault:"15s" help:"refresh interval of the SQL-backed gauges and the slot guard"`

	ColumnMap      string `env:"COLUMNS" help:"columns of an existing table by role: role=column,… (id, event_id, event_type, payload, status, attempts, next_attempt_at, last_error, created_at, delivered_at; optional: ordering_key, sequence, traceparent, tracestate)"`
	StatusValues   string `env:"STATUS_VALUES" help:"stored status values: pending=…,delivered=…,dead=… (default pending, delivered, dead)"`
	OrderingOnDead string `env:"ORDERING_ON_DEAD" envDefault:"skip" help:"with an ordering_key column: skip (a dead row lets its key go on) or block (the key waits until it is requeued or deleted)"`

	Parsed

	otel map[string]string // the OTEL_* variables of tracingVars, for validateTracing
}

// Parsed are the values Load derives from the variables, so that nothing
// is parsed twice. They have no env tag: the environment never sets them.
type Parsed struct {
	// DB is RELAY_DATABASE_URL parsed; copy it (DB.Copy()) before changing
	// it. Nil when the command does not need the database.
	DB         *pgxpool.Config
	Table      store.Table
	Columns    store.Columns
	Statuses   store.Statuses
	OnDead     store.OnDead
	SigningKey []byte // nil: no Standard Webhooks signature
	Level      slog.Level
	Tracing    Tracing
}

// Need says what a command needs of the settings: Load validates that much.
type Need int

// What commands need, each including the one before.
const (
	NeedTable    Need = iota // migrate --print: the table, its columns and the publication
	NeedDatabase             // migrate, status, requeue: and the database
	NeedRunner               // run: everything
)

// Error is a setting that is wrong. It names the variable and never
// carries the value of a secret.
type Error struct {
	Var string
	Msg string
}

func (e *Error) Error() string {
	if strings.HasPrefix(e.Var, "OTEL_") { // OpenTelemetry's own names have no prefix
		return e.Var + ": " + e.Msg
	}
	return Prefix + e.Var + ": " + e.Msg
}

// Load reads the settings from environ (KEY=VALUE pairs, as os.Environ
// returns them), checks what need asks for and fills in the parsed values.
// Every error is a *Error naming one variable.
func Load(environ []string, need Need) (Config, error) {
	c, err := Read(environ)
	if err != nil {
		return c, err
	}
	if err := c.Validate(need); err != nil {
		return c, err
	}
	return c, nil
}

// Read reads the configuration from environ and fills in defaults; a
// variable set to the empty string counts as unset. It does not validate:
// see Load.
func Read(environ []string) (Config, error) {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	var c Config
	c.otel = map[string]string{}
	for _, k := range tracingVars {
		c.otel[k] = m[k]
	}
	err := env.ParseWithOptions(&c, env.Options{Environment: m, Prefix: Prefix})
	if err == nil {
		return c, nil
	}
	// caarlos0/env names the Go field; users know the variable.
	var agg env.AggregateError
	if errors.As(err, &agg) && len(agg.Errors) > 0 {
		err = agg.Errors[0]
	}
	var pe env.ParseError
	if errors.As(err, &pe) {
		f, _ := reflect.TypeFor[Config]().FieldByName(pe.Name)
		return c, &Error{Var: f.Tag.Get("env"), Msg: "invalid value: " + parseReason(pe.Err)}
	}
	return c, err
}

// parseReason drops strconv's echo of the function name, keeping the value
// and what is wrong with it.
func parseReason(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && strings.HasPrefix(s, "strconv.") {
		return strings.TrimPrefix(s[:i], "strconv.") + ": " + s[i+2:]
	}
	return s
}

// Validate checks every setting that need asks for and fills in Parsed.
func (c *Config) Validate(need Need) error {
	if err := c.validateTable(); err != nil {
		return err
	}
	if need == NeedTable {
		return nil
	}
	if err := c.validateDatabase(); err != nil {
		return err
	}
	if need == NeedDatabase {
		return nil
	}
	for _, check := range []func() error{c.validateRunner, c.validateReplication, c.validateTimings, c.validateSizes, c.validateOutput, c.validateTracing} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

func (c *Config) validateTable() error {
	schema, name, err := ParseTable(c.OutboxTable)
	if err != nil {
		return &Error{"OUTBOX_TABLE", err.Error()}
	}
	c.Table = store.Table{Schema: schema, Name: name}
	if c.Columns, err = store.ParseColumns(c.ColumnMap); err != nil {
		return &Error{"COLUMNS", err.Error()}
	}
	if c.Statuses, err = store.ParseStatuses(c.StatusValues); err != nil {
		return &Error{"STATUS_VALUES", err.Error()}
	}
	if !identRE.MatchString(c.Publication) {
		return &Error{"PUBLICATION", "must be a plain SQL identifier (letters, digits, _; at most 63)"}
	}
	return nil
}

func (c *Config) validateDatabase() error {
	if c.DatabaseURL == "" {
		return &Error{"DATABASE_URL", "is required"}
	}
	db, err := parseDatabaseURL(c.DatabaseURL)
	if err != nil {
		return err
	}
	c.DB = db
	// status reads the blocked keys the way the relay claims them.
	if c.OnDead, err = store.ParseOnDead(c.OrderingOnDead); err != nil {
		return &Error{"ORDERING_ON_DEAD", err.Error()}
	}
	return nil
}

func (c *Config) validateRunner() error {
	if c.RunnerURL == "" {
		return &Error{"RUNNER_URL", "is required"}
	}
	if err := checkHTTPURL(c.RunnerURL); err != nil {
		return &Error{"RUNNER_URL", err.Error()}
	}
	c.SigningKey = nil
	if c.RunnerSecret != "" {
		key, err := DecodeSecret(c.RunnerSecret)
		if err != nil {
			return &Error{"RUNNER_SECRET", err.Error()}
		}
		c.SigningKey = key
	}
	// A header value cannot hold control characters: Go's client would
	// refuse every request, and the error would quote the token.
	if strings.ContainsFunc(c.RunnerToken, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return &Error{"RUNNER_TOKEN", "must not contain control characters (a line break, a tab, …)"}
	}
	return nil
}

func (c *Config) validateReplication() error {
	if !identRE.MatchString(c.SlotName) || strings.ToLower(c.SlotName) != c.SlotName {
		return &Error{"SLOT_NAME", "must be lower-case letters, digits and underscores, at most 63"}
	}
	switch c.CDC {
	case "auto", "on", "off":
	default:
		return &Error{"CDC", fmt.Sprintf("must be auto, on or off, not %q", c.CDC)}
	}
	if c.SlotWarnBytes <= 0 {
		return &Error{"SLOT_WARN_BYTES", "must be positive"}
	}
	if c.SlotMaxBytes < c.SlotWarnBytes {
		return &Error{"SLOT_MAX_BYTES", "must be at least RELAY_SLOT_WARN_BYTES"}
	}
	return nil
}

// durationBounds keep each duration where the relay works: below the lower
// bound a loop would spin or every attempt time out; above the upper one a
// lease or a timer would overflow or never fire in practice.
var durationBounds = []struct {
	name     string
	get      func(*Config) time.Duration
	min, max time.Duration
}{
	{"SWEEP_INTERVAL", func(c *Config) time.Duration { return c.SweepInterval }, 10 * time.Millisecond, 24 * time.Hour},
	{"BACKOFF_BASE", func(c *Config) time.Duration { return c.BackoffBase }, time.Millisecond, 24 * time.Hour},
	{"BACKOFF_MAX", func(c *Config) time.Duration { return c.BackoffMax }, time.Millisecond, 7 * 24 * time.Hour},
	{"HTTP_TIMEOUT", func(c *Config) time.Duration { return c.HTTPTimeout }, 10 * time.Millisecond, time.Hour},
	{"SHUTDOWN_TIMEOUT", func(c *Config) time.Duration { return c.ShutdownGrace }, 10 * time.Millisecond, time.Hour},
	{"STATS_INTERVAL", func(c *Config) time.Duration { return c.StatsInterval }, 100 * time.Millisecond, 24 * time.Hour},
	{"RUNNER_PROBE_MAX", func(c *Config) time.Duration { return c.ProbeMax }, 100 * time.Millisecond, 10 * time.Minute},
}

func (c *Config) validateTimings() error {
	for _, d := range durationBounds {
		if v := d.get(c); v < d.min || v > d.max {
			return &Error{d.name, fmt.Sprintf("must be between %s and %s, not %s", d.min, d.max, v)}
		}
	}
	if c.BackoffBase > c.BackoffMax {
		return &Error{"BACKOFF_BASE", fmt.Sprintf("%s is greater than RELAY_BACKOFF_MAX (%s)", c.BackoffBase, c.BackoffMax)}
	}
	if !(c.BackoffJitter >= 0 && c.BackoffJitter <= 1) { // also catches NaN
		return &Error{"BACKOFF_JITTER", fmt.Sprintf("must be between 0 and 1, not %v", c.BackoffJitter)}
	}
	if c.Retention < 0 {
		return &Error{"RETENTION", "must be 0 (keep forever) or a positive duration"}
	}
	return nil
}

func (c *Config) validateSizes() error {
	for _, n := range []struct {
		name   string
		v, max int
	}{
		{"MAX_ATTEMPTS", c.MaxAttempts, 1000},
		{"CONCURRENCY", c.Concurrency, 1024},
		{"BATCH_SIZE", c.BatchSize, 10000},
	} {
		if n.v < 1 || n.v > n.max {
			return &Error{n.name, fmt.Sprintf("must be between 1 and %d, not %d", n.max, n.v)}
		}
	}
	return nil
}

func (c *Config) validateOutput() error {
	if c.ListenAddr != "off" {
		_, port, err := net.SplitHostPort(c.ListenAddr)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
			return &Error{"LISTEN_ADDR", fmt.Sprintf("must be host:port or :port, not %q", c.ListenAddr)}
		}
	}
	if err := c.Level.UnmarshalText([]byte(c.LogLevel)); err != nil || !slices.Contains([]string{"debug", "info", "warn", "error"}, c.LogLevel) {
		return &Error{"LOG_LEVEL", fmt.Sprintf("must be debug, info, warn or error, not %q", c.LogLevel)}
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		return &Error{"LOG_FORMAT", fmt.Sprintf("must be json or text, not %q", c.LogFormat)}
	}
	return nil
}

// variable is one setting as its tags declare it.
type variable struct{ name, def, help string }

// variables lists the settings in the order of Config: what Help and
// Reference both render.
func variables() []variable {
	var vs []variable
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Tag.Get("env") != "" {
			vs = append(vs, variable{Prefix + f.Tag.Get("env"), f.Tag.Get("envDefault"), f.Tag.Get("help")})
		}
	}
	return vs
}

// Help returns one line per variable: name, default and meaning.
func Help() string {
	var b strings.Builder
	for _, v := range variables() {
		def := v.def
		if def == "" {
			def = "-"
		}
		fmt.Fprintf(&b, "  %-24s %-28s %s\n", v.name, def, v.help)
	}
	return b.String()
}

// Reference is the table of every variable in docs/configuration.md, made
// from the same tags as Help, so that the manual cannot drift from the
// code (a test compares them).
func Reference() string {
	var b strings.Builder
	b.WriteString("| variable | default | meaning |\n|---|---|---|\n")
	for _, v := range variables() {
		def := v.def
		if def != "" {
			def = "`" + def + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", v.name, def, v.help)
	}
	return b.String()
}
