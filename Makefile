# Targets for developers and CI. Tests need PostgreSQL server binaries
# (initdb, pg_ctl): internal/pgtest starts a throwaway cluster, or uses
# RELAY_TEST_DATABASE_URL when set. .ci/run installs them if missing.

GO ?= go
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: build test test-django fuzz lint demo bench faults soak pg-binaries test-matrix clean

build:
	$(GO) build -o bin/outbox-relay ./cmd/outbox-relay

# The whole suite, then a short bounded run of every fuzz target (the
# checked-in seed corpus runs with the suite too).
#
# Fuzz budgets are execution counts, not durations: with a duration, Go's
# fuzz coordinator can report its own deadline as a failure when a loaded
# machine's worker misses it ("context deadline exceeded", no failing input;
# go.dev/issue/75804, fixed in Go 1.27). CI failed that way once. A count
# has no deadline to race; a slow machine only takes longer.
test:
	$(GO) test -race -count=1 -timeout 15m ./...
	$(MAKE) fuzz FUZZTIME=20000x

# The Django app (contrib/django): its tests on Django's test runner and the
# browser test, against a throwaway PostgreSQL and the relay binary. It
# installs what they need (Debian packages when root, a virtualenv, npm ci);
# contrib/django/run-tests says how.
test-django: build
	$(GO) build -o bin/withpg ./internal/pgtest/withpg
	contrib/django/run-tests $(CURDIR)/bin/outbox-relay $(CURDIR)/bin/withpg

FUZZTIME ?= 300000x
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzLoad$$' -fuzztime=$(FUZZTIME) ./internal/config
	$(GO) test -run='^$$' -fuzz='^FuzzParse$$' -fuzztime=$(FUZZTIME) ./internal/retryafter
	$(GO) test -run='^$$' -fuzz='^FuzzStatementsKeepConfigAsData$$' -fuzztime=$(FUZZTIME) ./internal/store

# gofmt -l exits 0 even when files need formatting, so fail on any output.
lint:
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

demo:
	$(GO) run ./cmd/demo

bench:
	$(GO) run ./bench

# The fault suite at full counts (make test runs it at small counts).
# Results go to docs/faults-results.jsonl for docs/RELIABILITY.md.
faults:
	RELAY_FAULTS=full RELAY_FAULTS_OUT=$(CURDIR)/docs/faults-results.jsonl $(GO) test -count=1 -timeout 30m -v ./faults/

# The randomized soak (faults/soak_test.go) for minutes: a mix of
# application transactions while faults strike at random moments, then
# every promise checked. `make test` runs it for 30 s. SOAK_SEED replays
# a run (its result line prints the seed); SOAK_DURATION sets the length.
# Not under -race: the relays run as built for production.
SOAK_DURATION ?= 3m
SOAK_SEED ?=
soak:
	SOAK_SEED=$(SOAK_SEED) SOAK_DURATION=$(SOAK_DURATION) $(GO) test -count=1 -timeout 60m -v -run '^TestSoak$$' ./faults/

# PostgreSQL server binaries of each major version, fetched with npm into a
# cache outside the repository (.ci/pg-binaries pins the packages).
PG_MAJORS ?= 14 15 16 17 18
pg-binaries:
	.ci/pg-binaries $(PG_MAJORS)

# The store, stream, deliverer, command and test-harness tests and the
# fault suite (at small counts) on each of PG_MAJORS in turn, two packages
# at a time, then one summary line per version. Each version's go test -json output is
# kept in bin/matrix/. The fault suite, the longest, comes first, so that
# the others run beside it rather than after it.
MATRIX_PACKAGES ?= ./faults/ ./cmd/outbox-relay/ ./internal/store/ ./cdc/ ./relay/ ./internal/pgtest/
test-matrix: pg-binaries
	$(GO) run ./internal/testmatrix -go $(GO) -packages '$(MATRIX_PACKAGES)' -logs $(CURDIR)/bin/matrix \
		$(foreach v,$(PG_MAJORS),$(v)=$(shell .ci/pg-binaries --bindir $(v)))

clean:
	rm -rf bin
