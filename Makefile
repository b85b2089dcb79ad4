# credbroker — every set-up step a fresh machine needs lives here.
#   make run    build and start the broker in --dev mode (offline, ./data)
#   make test   lint, generated-code drift check, and the whole test suite with -race
#   make bench  benchmarks, with ratios printed side by side

GO        ?= go
BIN       := bin
DATA_DIR  ?= ./data
BUF       := $(GO) tool -modfile=tools/go.mod buf
PKGS      := ./...
TEST_FLAGS ?= -race -count=1 -timeout 20m

.PHONY: all build run test unit lint fmt-check vet buf-lint proto-check generate bench clean tools

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

run: build
	$(BIN)/credbroker serve --dev --data-dir $(DATA_DIR)

## tools: download and build the pinned code generators (buf, protoc-gen-go, protoc-gen-go-grpc)
tools:
	$(GO) build -modfile=tools/go.mod -o /dev/null github.com/bufbuild/buf/cmd/buf google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc

generate:
	$(BUF) generate

test: lint
	$(GO) test $(TEST_FLAGS) $(PKGS)

## unit: tests without the lint step (quicker while iterating)
unit:
	$(GO) test $(TEST_FLAGS) $(PKGS)

lint: fmt-check vet buf-lint proto-check

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

buf-lint:
	$(BUF) lint

## proto-check: fails when the committed generated code differs from what the .proto files generate
proto-check:
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	$(BUF) generate -o $$tmp && \
	for f in $$(cd $$tmp && find . -name '*.go' | sort); do \
	  cmp -s $$tmp/$$f $$f || { echo "generated code is stale: $$f (run 'make generate')"; exit 1; }; \
	done; \
	for f in $$(find proto -name '*.pb.go' | sort); do \
	  [ -f $$tmp/$$f ] || { echo "generated file has no .proto source: $$f"; exit 1; }; \
	done; echo "generated code matches the .proto files"

## bench: BenchmarkRatios (P1, P2 side by side; runs its rounds once) and the
## per-variant BenchmarkIssue. Tune with BENCH_CONCURRENCY, BENCH_ROUND, BENCH_ROUNDS, BENCH_DIR.
bench:
	$(GO) test -run '^$$' -bench . -timeout 10m ./test/bench/

clean:
	rm -rf $(BIN)
