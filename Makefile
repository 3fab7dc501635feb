# Targets for developers and CI. Tests need PostgreSQL server binaries
# (initdb, pg_ctl): internal/pgtest starts a throwaway cluster, or uses
# RELAY_TEST_DATABASE_URL when set. .ci/run installs them if missing.

GO ?= go
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: build test fuzz lint demo bench faults clean

build:
	$(GO) build -o bin/outbox-relay ./cmd/outbox-relay

# The whole suite, then a short bounded run of every fuzz target (the
# checked-in seed corpus runs with the suite too).
test:
	$(GO) test -race -count=1 -timeout 15m ./...
	$(MAKE) fuzz FUZZTIME=5s

FUZZTIME ?= 30s
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzLoad$$' -fuzztime=$(FUZZTIME) ./internal/config
	$(GO) test -run='^$$' -fuzz='^FuzzParse$$' -fuzztime=$(FUZZTIME) ./internal/retryafter

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

clean:
	rm -rf bin
