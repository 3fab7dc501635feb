# Targets for developers and CI. Tests need PostgreSQL server binaries
# (initdb, pg_ctl): internal/pgtest starts a throwaway cluster, or uses
# RELAY_TEST_DATABASE_URL when set. .ci/run installs them if missing.

GO ?= go
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: build test lint demo bench faults clean

build:
	$(GO) build -o bin/outbox-relay ./cmd/outbox-relay

test:
	$(GO) test -race -count=1 -timeout 15m ./...

# gofmt -l exits 0 even when files need formatting, so fail on any output.
lint:
	@out="$$(gofmt -l .)"; if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

demo:
	$(GO) run ./cmd/demo

bench:
	$(GO) run ./bench

# Fault tests run the real binary as a child process and kill it: slow,
# so behind a build tag and a longer timeout.
faults:
	$(GO) test -race -count=1 -timeout 30m -tags faults ./faults/...

clean:
	rm -rf bin
