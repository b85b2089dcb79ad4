# credbroker — every set-up step a fresh machine needs lives here.
#   make run        build and start the broker in --dev mode (offline, ./data)
#   make test       lint, generated-code drift check, and the test suite with -race (minutes)
#   make test-slow  the tests that wait out an upstream's real clock (about 16 minutes, mostly waiting)
#   make ci         what .ci/run does on a fresh machine: all of the above, the slow parts side by side
#   make bench      benchmarks, with ratios printed side by side
#   make fuzz       every fuzz target for FUZZTIME each (default 30s)

SHELL     := bash
GO        ?= go
BIN       := bin
DATA_DIR  ?= ./data
BUF       := $(GO) tool -modfile=tools/go.mod buf
STATICCHECK := $(GO) tool -modfile=tools/go.mod staticcheck
PKGS      := ./...
# -p: test binaries run at once. Most packages spend their time waiting on the servers they start (MinIO,
# Vault, the broker binary), so more than the 2 cores' worth overlaps those waits.
TEST_FLAGS ?= -race -count=1 -timeout 30m -p 4

# Tests that wait out an upstream's own clock, which no test can inject (MinIO's 15-minute minimum STS
# credential): `make test` leaves exactly these out and `make test-slow` runs exactly these, failing unless
# every one ran and passed — a renamed or skipped slow test cannot drop out of CI unnoticed. A slow test
# in another package adds its name here and its package to SLOW_PKGS.
SLOW_TESTS := TestAWSCredentialExpiresWhenTheBrokerSaid
SLOW_PKGS  := ./test/e2e/
empty :=
space := $(empty) $(empty)
SLOW_RE := ^($(subst $(space),|,$(strip $(SLOW_TESTS))))$$

.PHONY: all build run test unit test-slow ci precompile lint fmt-check vet staticcheck darwin buf-lint buf-breaking api-baseline proto-check generate bench fuzz clean tools

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

run: build
	$(BIN)/credbroker serve --dev --data-dir $(DATA_DIR)

## tools: download and build the pinned tools (buf, protoc-gen-go, protoc-gen-go-grpc, staticcheck)
tools:
	$(GO) build -modfile=tools/go.mod -o /dev/null github.com/bufbuild/buf/cmd/buf google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc honnef.co/go/tools/cmd/staticcheck

generate:
	$(BUF) generate

## test: lint and the suite side by side (lint is mostly CPU, the suite mostly waits on servers); fails if either does.
## Their output interleaves line by line (make's --output-sync would hold each step's output until it ends).
test:
	@$(MAKE) --no-print-directory -j2 lint unit

## unit: the suite without lint and without the slow tests (quicker while iterating)
unit:
	$(GO) test $(TEST_FLAGS) -skip '$(SLOW_RE)' $(PKGS)

## test-slow: the SLOW_TESTS, verbosely; fails unless each of them ran and passed
test-slow:
	@log=$$(mktemp) && trap 'rm -f "$$log"' EXIT && \
	echo "test-slow: $(SLOW_TESTS) (each waits out an upstream's real clock)" && \
	$(GO) test $(TEST_FLAGS) -v -run '$(SLOW_RE)' $(SLOW_PKGS) 2>&1 | tee "$$log" | grep -E '^(=== RUN|--- |ok|FAIL|PASS|panic)' ; \
	rc=$${PIPESTATUS[0]}; [ $$rc = 0 ] || { grep -v '^=== ' "$$log" | tail -n 80; exit $$rc; }; \
	for t in $(SLOW_TESTS); do \
	  grep -q -- "^--- PASS: $$t " "$$log" || { echo "test-slow: $$t did not run and pass"; exit 1; }; \
	done; echo "test-slow: all $(words $(SLOW_TESTS)) slow tests ran and passed"

## precompile: build the binaries and every test binary without running anything, so that the test
## steps start at once; on a fresh machine it runs beside the server builds
precompile:
	$(GO) build ./...
	$(GO) test $(TEST_FLAGS) -run '^$$' $(PKGS) > /dev/null

## ci: what .ci/run does, ordered for wall-clock time on a fresh machine: ci-prepare, then the README's
## `make test`. ci-prepare starts the Vault and kube-apiserver builds (the longest steps) at once; MinIO, the AWS CLI, the
## tools and the test binaries build beside it, and the slow tests (which mostly sleep) run as soon as
## what they need is there. `make test` (lint beside the suite) then runs with everything in place.
## Every step is a failure when it fails; nothing is skipped.
ci: ci-prepare
	@$(MAKE) --no-print-directory test
.PHONY: ci-prepare ci-vault ci-kube-apiserver ci-tools ci-slow ci-precompile
ci-prepare:
	@$(MAKE) --no-print-directory -j4 ci-vault ci-kube-apiserver ci-tools ci-slow ci-precompile
ci-vault: vault
ci-kube-apiserver: kube-apiserver
ci-tools: tools
ci-precompile:
	@$(MAKE) --no-print-directory precompile
ci-slow: ci-precompile minio awscli
	@$(MAKE) --no-print-directory test-slow

lint: fmt-check vet staticcheck darwin buf-lint buf-breaking proto-check

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# deploy/ is a module of its own (the image and kustomize tools): vetted and checked beside the main one.
vet:
	$(GO) vet $(PKGS)
	$(GO) -C deploy vet ./...

staticcheck:
	$(STATICCHECK) $(PKGS)
	cd deploy && $(GO) tool -modfile=../tools/go.mod staticcheck ./...

## darwin: the binaries build for macOS too, so `make run` works on an operator's laptop
darwin:
	GOOS=darwin $(GO) build $(PKGS)

buf-lint:
	$(BUF) lint

## buf-breaking: the API must stay wire- and source-compatible with the released v1 API, kept
## as a buf image in $(API_BASELINE). Comparing with a branch would compare main with itself on
## a clean clone of main; a committed baseline catches a breaking change wherever lint runs.
API_BASELINE := proto/credbroker-v1.binpb
buf-breaking:
	$(BUF) breaking --against $(API_BASELINE)

## api-baseline: record the current API as the compatibility baseline, once additions are
## released (so that they are protected too); commit the file with them. It refuses a breaking
## change unless BREAK=1 says the break is deliberate and reviewed (a new major version).
api-baseline:
	@[ -n "$(BREAK)" ] || $(BUF) breaking --against $(API_BASELINE)
	$(BUF) build --exclude-source-info -o $(API_BASELINE)

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

## bench: the benchmark table (BenchmarkTable): P1-P7, the audit's growth under a refusal flood and the fleet simulation (FLEET_CLUSTERS=1000 clusters on 3 replicas and a 3-member etcd), on the
## credbroker binary and in-process, measured side by side in one run; printed, and written to BENCH_JSON.
## Tuning (BENCH_CLIENTS, BENCH_ROUND, BENCH_ROUNDS, BENCH_DIR, ...): test/bench/doc.go.
## BENCH_DIR holds the daemons' data directories while they run, and P6's record databases between runs.
BENCH_JSON ?= $(CURDIR)/bench-results.json
BENCH_DIR ?= $(CACHE_DIR)/bench
bench:
	@mkdir -p "$(BENCH_DIR)"
	BENCH_JSON="$(BENCH_JSON)" BENCH_DIR="$(BENCH_DIR)" $(GO) test -run '^$$' -bench '^BenchmarkTable$$' -benchtime 1x -timeout 30m ./test/bench/

## fuzz: run every fuzz target (a func FuzzXxx in a _test.go file) for FUZZTIME, one after another:
## `go test -fuzz` takes one target per run. It stops at the first failure; the failing input is then
## in the package's testdata/fuzz/FuzzXxx/ and replays as an ordinary test. The seed corpora (f.Add and
## testdata/fuzz) run in `make test` like any test.
FUZZTIME ?= 30s

fuzz:
	@set -e; for file in $$(grep -rl --include='*_test.go' '^func Fuzz' . | sort); do \
	  pkg=$$(dirname $$file); \
	  for target in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$file); do \
	    echo "== $$target ($$pkg, $(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

## minio: install the pinned MinIO server (the tests' real STS and S3) into $(CACHE_DIR), once per version;
## `unit`, `test` and `test-slow` pass its path to the tests as CREDBROKER_MINIO.
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
CACHE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/credbroker
MINIO_BIN := $(CACHE_DIR)/minio-$(MINIO_VERSION)/minio

.PHONY: minio
minio: $(MINIO_BIN)

# Built in a temporary directory beside the target and renamed into place, so an
# interrupted build never leaves a half-written binary that later runs would trust.
# GOFLAGS is cleared so that a developer's flags cannot change the pinned build.
$(MINIO_BIN):
	@mkdir -p "$(@D)"
	@tmp=$$(mktemp -d "$(@D).build.XXXXXX") && trap 'rm -rf "$$tmp"' EXIT && \
	echo "building MinIO $(MINIO_VERSION) (a few minutes, once)" && \
	GOBIN="$$tmp" GOFLAGS= $(GO) install github.com/minio/minio@$(MINIO_VERSION) && \
	mv -f "$$tmp/minio" "$@"

unit test-slow: minio
unit test-slow: export CREDBROKER_MINIO := $(MINIO_BIN)

clean:
	rm -rf $(BIN)

## image: the container image without a container daemon (deploy/cmd/ocimage, go-containerregistry):
## static linux binaries for IMAGE_ARCH, user 65532, entrypoint credbroker; written as an OCI archive
## to $(IMAGE_TAR) (`skopeo copy oci-archive:$(IMAGE_TAR) docker://REGISTRY/credbroker:TAG`). The same
## image as deploy/Dockerfile. deploy/ is its own Go module, so these build tools stay out of the broker's.
IMAGE_ARCH ?= $(shell $(GO) env GOARCH)
IMAGE_TAG  ?= credbroker:dev
IMAGE_TAR  := $(BIN)/credbroker-image-$(IMAGE_ARCH).tar
.PHONY: image
image:
	@mkdir -p $(BIN)/image-$(IMAGE_ARCH)
	CGO_ENABLED=0 GOOS=linux GOARCH=$(IMAGE_ARCH) $(GO) build -trimpath -ldflags="-s -w" -o $(BIN)/image-$(IMAGE_ARCH)/ \
	  ./cmd/credbroker ./cmd/credbroker-sidecar ./cmd/credbroker-credential-process ./cmd/credbrokerctl
	$(GO) -C deploy run ./cmd/ocimage --bin-dir ../$(BIN)/image-$(IMAGE_ARCH) --arch $(IMAGE_ARCH) --tag $(IMAGE_TAG) --out ../$(IMAGE_TAR)
	@echo "image: $(IMAGE_TAR) ($(IMAGE_TAG), linux/$(IMAGE_ARCH))"

## awscli: install Debian's AWS CLI (the tests' real `aws` client) when /usr/bin/aws is missing; with
## sudo unless root, and `apt-get update` only when the package lists lack it. `unit`, `test` and `test-slow` pass its
## path to the tests as CREDBROKER_AWSCLI: they never run whatever `aws` comes first on PATH (a pyenv
## shim may).
AWSCLI := /usr/bin/aws

.PHONY: awscli
awscli:
	@[ -x "$(AWSCLI)" ] && exit 0; \
	sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	install() { $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends awscli; }; \
	echo "installing Debian's awscli (the AWS CLI tests need $(AWSCLI))"; \
	out=$$(install 2>&1); rc=$$?; echo "$$out"; \
	if [ $$rc != 0 ] && echo "$$out" | grep -q 'Unable to locate package'; then \
	  $$sudo apt-get update && install; rc=$$?; \
	fi; \
	[ $$rc = 0 ] && [ -x "$(AWSCLI)" ] || { echo "awscli: $(AWSCLI) is still missing"; exit 1; }

unit test-slow: awscli
unit test-slow: export CREDBROKER_AWSCLI := $(AWSCLI)

## vault: build the pinned HashiCorp Vault server (the tests' real Vault) into $(CACHE_DIR), once per
## version (~15 minutes cold, ~6 GB of memory); `unit` and `test` pass its path to the tests as
## CREDBROKER_VAULT. See scripts/build-vault.sh for why it is built from a patched module copy.
VAULT_VERSION := v1.21.4
VAULT_BIN := $(CACHE_DIR)/vault-$(VAULT_VERSION)/vault

.PHONY: vault
vault: $(VAULT_BIN)

$(VAULT_BIN):
	GO="$(GO)" ./scripts/build-vault.sh $(VAULT_VERSION) "$@"

unit: vault
unit: export CREDBROKER_VAULT := $(VAULT_BIN)
bench: vault
bench: export CREDBROKER_VAULT := $(VAULT_BIN)

## kube-apiserver: build the pinned Kubernetes API server (test/deploy's real API server) into
## $(CACHE_DIR), once per version (~9 minutes alone on 2 idle cores; 26 minutes measured beside other
## builds); `unit` and `test` pass its path to the tests as CREDBROKER_KUBE_APISERVER. See
## scripts/build-kube-apiserver.sh for why it is built from a patched module copy.
KUBE_VERSION := v1.37.2
KUBE_APISERVER_BIN := $(CACHE_DIR)/kube-apiserver-$(KUBE_VERSION)/kube-apiserver

.PHONY: kube-apiserver
kube-apiserver: $(KUBE_APISERVER_BIN)

$(KUBE_APISERVER_BIN):
	GO="$(GO)" ./scripts/build-kube-apiserver.sh $(KUBE_VERSION) "$@"

unit: kube-apiserver
unit: export CREDBROKER_KUBE_APISERVER := $(KUBE_APISERVER_BIN)
