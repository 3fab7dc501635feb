package deploy_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/outbox-relay/outbox-relay/internal/config"
)

// The tests run in deploy/, so paths are relative to it.

// yamlFiles lists every *.yaml and *.yml file under deploy/.
func yamlFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if ext := filepath.Ext(path); !d.IsDir() && (ext == ".yaml" || ext == ".yml") {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// decodeAll decodes every document of a YAML file; a file made of comments
// only has none.
func decodeAll(path string) ([]any, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	var docs []any
	for i := 1; ; i++ {
		var doc any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if doc != nil { // an empty document, as after a trailing ---
			docs = append(docs, doc)
		}
	}
}

func mustDecode(t *testing.T, path string) []any {
	t.Helper()
	docs, err := decodeAll(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return docs
}

// dig walks maps (string keys) and lists (int keys); nil when absent.
func dig(v any, keys ...any) any {
	for _, k := range keys {
		switch k := k.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func str(v any, keys ...any) string {
	s, _ := dig(v, keys...).(string)
	return s
}

func list(v any, keys ...any) []any {
	l, _ := dig(v, keys...).([]any)
	return l
}

func TestEveryYAMLFileParses(t *testing.T) {
	files := yamlFiles(t)
	// Guards the walk itself: these must be among what it found.
	for _, want := range []string{"compose.yaml", "prometheus/alerts.yaml", "kubernetes/statefulset.yaml"} {
		if !slices.Contains(files, filepath.FromSlash(want)) {
			t.Errorf("walk of deploy/ did not find %s; found %v", want, files)
		}
	}
	for _, path := range files {
		docs, err := decodeAll(path)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		if len(docs) == 0 {
			t.Errorf("%s: no YAML document", path)
		}
		for i, doc := range docs {
			if _, ok := doc.(map[string]any); !ok {
				t.Errorf("%s: document %d is a %T, want a mapping", path, i+1, doc)
			}
		}
	}
}

// manifests are the Kubernetes objects under kubernetes/, by kind and name.
type manifests map[string]map[string]any

func (m manifests) get(t *testing.T, kind, name string) map[string]any {
	t.Helper()
	obj, ok := m[kind+"/"+name]
	if !ok {
		t.Fatalf("no %s named %q in kubernetes/", kind, name)
	}
	return obj
}

func loadManifests(t *testing.T) manifests {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("kubernetes", "*.y*ml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in kubernetes/ (%v)", err)
	}
	m := manifests{}
	for _, path := range files {
		for i, doc := range mustDecode(t, path) {
			obj, _ := doc.(map[string]any)
			apiVersion, kind, name := str(obj, "apiVersion"), str(obj, "kind"), str(obj, "metadata", "name")
			if apiVersion == "" || kind == "" || name == "" {
				t.Errorf("%s: document %d lacks apiVersion, kind or metadata.name (%q, %q, %q)", path, i+1, apiVersion, kind, name)
				continue
			}
			if _, dup := m[kind+"/"+name]; dup {
				t.Errorf("%s: %s/%s is defined twice", path, kind, name)
			}
			m[kind+"/"+name] = obj
		}
	}
	return m
}

func TestKubernetesManifestsHaveIdentity(t *testing.T) {
	m := loadManifests(t)
	for _, want := range []string{"StatefulSet/outbox-postgres", "Service/outbox-postgres", "Secret/outbox-relay", "ConfigMap/outbox-postgres-config"} {
		if _, ok := m[want]; !ok {
			t.Errorf("kubernetes/ has no %s", want)
		}
	}
}

// relayVars is every RELAY_ variable the relay reads.
func relayVars() map[string]bool {
	vars := map[string]bool{}
	typ := reflect.TypeFor[config.Config]()
	for i := range typ.NumField() {
		if name := typ.Field(i).Tag.Get("env"); name != "" {
			vars[config.Prefix+name] = true
		}
	}
	return vars
}

// loadRelayConfig loads and validates the settings a deployment gives the
// relay, as the relay itself would at start-up.
func loadRelayConfig(t *testing.T, where string, env map[string]string, run bool) config.Config {
	t.Helper()
	known := relayVars()
	var environ []string
	for k, v := range env {
		if strings.HasPrefix(k, config.Prefix) && !known[k] {
			t.Errorf("%s: %s is not a setting of the relay (see outbox-relay --help)", where, k)
		}
		environ = append(environ, k+"="+v)
	}
	need := config.NeedDatabase
	if run {
		need = config.NeedRunner
	}
	cfg, err := config.Load(environ, need)
	if err != nil {
		t.Fatalf("%s: the relay would refuse these settings: %v", where, err)
	}
	return cfg
}

func listenPort(t *testing.T, cfg config.Config) string {
	t.Helper()
	_, port, err := net.SplitHostPort(cfg.ListenAddr)
	if err != nil {
		t.Fatalf("RELAY_LISTEN_ADDR %q: %v", cfg.ListenAddr, err)
	}
	return port
}

// containerEnv resolves a container's env, values from Secrets included.
func containerEnv(t *testing.T, m manifests, c any) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, e := range list(c, "env") {
		name := str(e, "name")
		if v, ok := dig(e, "value").(string); ok {
			env[name] = v
			continue
		}
		ref := dig(e, "valueFrom", "secretKeyRef")
		if ref == nil {
			t.Errorf("env %s: neither a string value nor a secretKeyRef", name)
			continue
		}
		secret := m.get(t, "Secret", str(ref, "name"))
		v, ok := dig(secret, "stringData", str(ref, "key")).(string)
		if !ok {
			t.Errorf("env %s: Secret %s has no key %q", name, str(ref, "name"), str(ref, "key"))
		}
		env[name] = v
	}
	return env
}

func container(t *testing.T, podSpec any, name string) any {
	t.Helper()
	for _, c := range list(podSpec, "containers") {
		if str(c, "name") == name {
			return c
		}
	}
	t.Fatalf("no container %q in the pod", name)
	return nil
}

func TestKubernetesSidecar(t *testing.T) {
	m := loadManifests(t)
	sts := m.get(t, "StatefulSet", "outbox-postgres")
	pod := dig(sts, "spec", "template")
	spec := dig(pod, "spec")

	svc := m.get(t, "Service", str(sts, "spec", "serviceName"))
	if dig(svc, "spec", "selector", "app.kubernetes.io/name") != dig(pod, "metadata", "labels", "app.kubernetes.io/name") {
		t.Errorf("Service %s does not select the StatefulSet's pods", str(svc, "metadata", "name"))
	}
	if dig(svc, "spec", "ports", 0, "port") != 5432 {
		t.Errorf("Service port = %v, want 5432", dig(svc, "spec", "ports", 0, "port"))
	}

	relayC := container(t, spec, "outbox-relay")
	if a := list(relayC, "args"); len(a) != 1 || a[0] != "run" {
		t.Errorf("relay args = %v, want [run]", a)
	}
	env := containerEnv(t, m, relayC)
	cfg := loadRelayConfig(t, "statefulset.yaml outbox-relay", env, true)
	for v, key := range map[string]string{"RELAY_DATABASE_URL": "database-url", "RELAY_RUNNER_SECRET": "runner-secret", "RELAY_RUNNER_TOKEN": "runner-token"} {
		found := false
		for _, e := range list(relayC, "env") {
			if str(e, "name") == v {
				found = true
				if str(e, "valueFrom", "secretKeyRef", "name") != "outbox-relay" || str(e, "valueFrom", "secretKeyRef", "key") != key {
					t.Errorf("%s must come from Secret outbox-relay key %s", v, key)
				}
			}
		}
		if !found {
			t.Errorf("relay container does not set %s", v)
		}
	}
	if !strings.Contains(cfg.DatabaseURL, "@127.0.0.1:") {
		t.Errorf("the sidecar should reach Postgres over the pod's loopback, not %q", cfg.DatabaseURL)
	}

	port := listenPort(t, cfg)
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"} {
		if got := str(relayC, probe, "httpGet", "path"); got != path {
			t.Errorf("%s path = %q, want %q", probe, got, path)
		}
		if got := fmt.Sprint(dig(relayC, probe, "httpGet", "port")); got != port {
			t.Errorf("%s port = %s, want RELAY_LISTEN_ADDR's %s", probe, got, port)
		}
	}
	if got := fmt.Sprint(dig(relayC, "ports", 0, "containerPort")); got != port {
		t.Errorf("containerPort = %s, want %s", got, port)
	}

	annotations := dig(pod, "metadata", "annotations")
	for k, want := range map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": port, "prometheus.io/path": "/metrics"} {
		if got := str(annotations, k); got != want {
			t.Errorf("pod annotation %s = %q, want %q (a string)", k, got, want)
		}
	}

	grace, ok := dig(spec, "terminationGracePeriodSeconds").(int)
	// After the grace the relay may still write outcomes (10 s) and give
	// back unsent claims (5 s): see relay.Deliverer.Run.
	if !ok || time.Duration(grace)*time.Second < cfg.ShutdownGrace+15*time.Second {
		t.Errorf("terminationGracePeriodSeconds = %v, must be at least RELAY_SHUTDOWN_TIMEOUT (%s) + 15s", dig(spec, "terminationGracePeriodSeconds"), cfg.ShutdownGrace)
	}

	sc := dig(relayC, "securityContext")
	for k, want := range map[string]any{"runAsNonRoot": true, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false} {
		if got := dig(sc, k); got != want {
			t.Errorf("relay securityContext.%s = %v, want %v", k, got, want)
		}
	}
	if uid, _ := dig(sc, "runAsUser").(int); uid == 0 {
		t.Errorf("relay securityContext.runAsUser = %v, want the image's non-root 65532", dig(sc, "runAsUser"))
	}
	if !slices.Contains(list(sc, "capabilities", "drop"), any("ALL")) {
		t.Errorf("relay securityContext.capabilities.drop = %v, want ALL", dig(sc, "capabilities", "drop"))
	}
	for _, k := range []string{"requests", "limits"} {
		for _, r := range []string{"cpu", "memory"} {
			if dig(relayC, "resources", k, r) == nil {
				t.Errorf("relay resources.%s.%s is not set", k, r)
			}
		}
	}

	// Postgres: its settings come from the ConfigMap, mounted as config_file.
	pg := container(t, spec, "postgres")
	args := strings.Join(strings.Fields(fmt.Sprint(list(pg, "args"))), " ")
	if !strings.Contains(args, "config_file=/etc/postgresql/postgresql.conf") {
		t.Errorf("postgres args %s do not load the ConfigMap's postgresql.conf", args)
	}
	var cmName string
	for _, v := range list(spec, "volumes") {
		if n := str(v, "configMap", "name"); n != "" {
			cmName = n
			m.get(t, "ConfigMap", n)
		}
	}
	conf := parsePostgresConf(str(m.get(t, "ConfigMap", cmName), "data", "postgresql.conf"))
	if conf["wal_level"] != "logical" {
		t.Errorf("ConfigMap wal_level = %q, want logical", conf["wal_level"])
	}
	if v := conf["max_slot_wal_keep_size"]; v == "" || v == "-1" {
		t.Errorf("ConfigMap max_slot_wal_keep_size = %q, want a limit", v)
	}
	if conf["listen_addresses"] == "" {
		t.Error("ConfigMap has no listen_addresses: Postgres would listen on localhost only, out of the Service's reach")
	}
	for _, e := range list(pg, "env") {
		if ref := dig(e, "valueFrom", "secretKeyRef"); ref != nil {
			if _, ok := dig(m.get(t, "Secret", str(ref, "name")), "stringData", str(ref, "key")).(string); !ok {
				t.Errorf("postgres env %s: Secret %s has no key %q", str(e, "name"), str(ref, "name"), str(ref, "key"))
			}
		}
	}
}

// parsePostgresConf reads `name = value` lines, dropping comments and quotes.
func parsePostgresConf(s string) map[string]string {
	conf := map[string]string{}
	for line := range strings.Lines(s) {
		line, _, _ = strings.Cut(line, "#")
		k, v, ok := strings.Cut(line, "=")
		if ok {
			conf[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), "'")
		}
	}
	return conf
}

func TestExampleSecretsAreFake(t *testing.T) {
	for name, obj := range loadManifests(t) {
		if str(obj, "kind") != "Secret" {
			continue
		}
		if dig(obj, "data") != nil {
			t.Errorf("%s: use stringData, so that the placeholders are readable", name)
		}
		data, _ := dig(obj, "stringData").(map[string]any)
		for k, v := range data {
			if s, _ := v.(string); !strings.Contains(strings.ToLower(s), "fake") {
				t.Errorf("%s: %s = %q does not look like a placeholder (say FAKE in it)", name, k, s)
			}
		}
	}
}

// composeEnv reads a compose service's environment, taking the default of
// ${VAR:-default} as the shell would with VAR unset.
func composeEnv(t *testing.T, svc any) map[string]string {
	t.Helper()
	interp := regexp.MustCompile(`\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}`)
	env := map[string]string{}
	m, ok := dig(svc, "environment").(map[string]any)
	if !ok {
		t.Fatalf("environment is a %T, want a mapping", dig(svc, "environment"))
	}
	for k, v := range m {
		s, ok := v.(string)
		if !ok {
			t.Errorf("environment %s: %v is not a string (quote it)", k, v)
		}
		if strings.Contains(s, "$") && !interp.MatchString(s) {
			t.Errorf("environment %s: %q uses a variable without a default", k, s)
		}
		env[k] = interp.ReplaceAllString(s, "$1")
	}
	return env
}

func TestCompose(t *testing.T) {
	docs := mustDecode(t, "compose.yaml")
	services := dig(docs[0], "services")
	pg, relaySvc, migrate, runner := dig(services, "postgres"), dig(services, "relay"), dig(services, "migrate"), dig(services, "runner")
	if pg == nil || relaySvc == nil || migrate == nil || runner == nil {
		t.Fatalf("compose.yaml needs services postgres, migrate, relay and runner; has %v", services)
	}

	cmd := strings.Join(strings.Fields(fmt.Sprint(list(pg, "command"))), " ")
	for _, want := range []string{"wal_level=logical", "max_slot_wal_keep_size="} {
		if !strings.Contains(cmd, want) {
			t.Errorf("postgres command %s lacks %s", cmd, want)
		}
	}
	if !strings.Contains(fmt.Sprint(dig(pg, "healthcheck", "test")), "pg_isready") {
		t.Errorf("postgres healthcheck = %v, want pg_isready", dig(pg, "healthcheck", "test"))
	}

	if c := list(migrate, "command"); len(c) != 1 || c[0] != "migrate" {
		t.Errorf("migrate command = %v, want [migrate]", c)
	}
	loadRelayConfig(t, "compose migrate", composeEnv(t, migrate), false)
	if str(migrate, "depends_on", "postgres", "condition") != "service_healthy" {
		t.Error("migrate must wait for postgres to be healthy")
	}

	cfg := loadRelayConfig(t, "compose relay", composeEnv(t, relaySvc), true)
	if cfg.RunnerURL != "http://runner:8080/events" {
		t.Errorf("RELAY_RUNNER_URL = %q, want the example runner", cfg.RunnerURL)
	}
	if cfg.RunnerSecret == "" {
		t.Error("RELAY_RUNNER_SECRET has no default: the demo should sign its requests")
	}
	if str(relaySvc, "depends_on", "postgres", "condition") != "service_healthy" ||
		str(relaySvc, "depends_on", "migrate", "condition") != "service_completed_successfully" {
		t.Errorf("relay depends_on = %v, want postgres healthy and migrate completed successfully", dig(relaySvc, "depends_on"))
	}
	port := listenPort(t, cfg)
	if !slices.ContainsFunc(list(relaySvc, "ports"), func(p any) bool { return strings.HasSuffix(fmt.Sprint(p), ":"+port) }) {
		t.Errorf("relay ports = %v, want one to container port %s", dig(relaySvc, "ports"), port)
	}
	for name, svc := range map[string]any{"relay": relaySvc, "migrate": migrate} {
		if str(svc, "build", "dockerfile") != "deploy/Dockerfile" || str(svc, "build", "context") != ".." {
			t.Errorf("%s build = %v, want the repository root with deploy/Dockerfile", name, dig(svc, "build"))
		}
	}
	if !strings.Contains(fmt.Sprint(list(runner, "command")), "8080") {
		t.Errorf("the runner does not listen on 8080: %v", dig(runner, "command"))
	}
}

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	line      int
	cmd, args string
}

func parseDockerfile(t *testing.T, path string) []instruction {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []instruction
	var cur strings.Builder
	start := 0
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if s, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{start, strings.ToUpper(cmd), strings.Join(strings.Fields(args), " ")})
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDockerfile(t *testing.T) {
	ins := parseDockerfile(t, "Dockerfile")
	var stages [][]instruction
	for _, in := range ins {
		if in.cmd == "FROM" {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("line %d: %s before the first FROM", in.line, in.cmd)
			}
			continue
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], in)
		if in.cmd == "HEALTHCHECK" {
			t.Errorf("line %d: HEALTHCHECK: the probes are HTTP (/healthz, /readyz), and the image has nothing to run one with", in.line)
		}
	}
	if len(stages) < 2 {
		t.Fatalf("want a multi-stage build, got %d stage(s)", len(stages))
	}

	build := stages[0]
	goMod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(goMod)
	if goVersion == nil {
		t.Fatal("no go directive in go.mod")
	}
	if want := "golang:" + string(goVersion[1]) + "-"; !strings.HasPrefix(build[0].args, want) {
		t.Errorf("builder %q: want %s* to match go.mod's go %s", build[0].args, want, goVersion[1])
	}
	var goBuild string
	for _, in := range build {
		if in.cmd == "RUN" && strings.Contains(in.args, "go build") {
			goBuild = in.args
		}
	}
	// cmd/outbox-relay's TestVersionIsSetByTheBuild keeps the -X target a
	// string variable.
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-s -w", "-X main.version=${VERSION}", "./cmd/outbox-relay"} {
		if !strings.Contains(goBuild, want) {
			t.Errorf("go build step %q lacks %s", goBuild, want)
		}
	}

	final := stages[len(stages)-1]
	image := strings.Fields(final[0].args)[0]
	user := ""
	got := map[string]string{}
	for _, in := range final {
		got[in.cmd] = in.args
		if in.cmd == "USER" {
			user = in.args
		}
	}
	if !strings.HasPrefix(image, "gcr.io/distroless/static") {
		t.Errorf("final image %s: want a distroless static base for a CGO-free binary", image)
	}
	if u, _, _ := strings.Cut(user, ":"); u == "" && !strings.HasSuffix(image, ":nonroot") || u == "0" || u == "root" {
		t.Errorf("final stage runs as %q on %s: want a non-root user", user, image)
	}
	if got["ENTRYPOINT"] != `["/outbox-relay"]` || got["CMD"] != `["run"]` {
		t.Errorf("ENTRYPOINT %s CMD %s, want [\"/outbox-relay\"] [\"run\"]", got["ENTRYPOINT"], got["CMD"])
	}
	if !strings.Contains(got["COPY"], "/outbox-relay") || !strings.Contains(got["COPY"], "--from=") {
		t.Errorf("final stage COPY %q: want the binary from the build stage", got["COPY"])
	}
	defaults, err := config.Read(nil)
	if err != nil {
		t.Fatal(err)
	}
	if port := listenPort(t, defaults); got["EXPOSE"] != port {
		t.Errorf("EXPOSE %q, want RELAY_LISTEN_ADDR's default port %s", got["EXPOSE"], port)
	}

	ignore, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{".git", "bin/"} {
		if !slices.Contains(strings.Fields(string(ignore)), want) {
			t.Errorf(".dockerignore lacks %s", want)
		}
	}
}
