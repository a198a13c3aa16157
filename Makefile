# Bowline — make targets. `make run` and `make test` work on a fresh machine
# with Go installed; everything else the tests need is built here.

GO        ?= go
BIN       := bin
CONSUL    := $(BIN)/consul
TEST_TIMEOUT ?= 40m

.PHONY: build run test unit lint bench bench-full consul deps clean

build:
	$(GO) build -o $(BIN)/bowline ./cmd/bowline

## run: start bowline server on the quickstart example (file registry only)
run: build
	$(BIN)/bowline server --config examples/quickstart --data-dir .bowline-data

## test: vet, then every test with the race detector (builds Consul, installs
## redis-server and chromium when missing: the tests run them for real)
test: consul deps lint
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

## unit: the tests without building Consul (the Consul tests fail without it)
unit:
	$(GO) test -race -count=1 ./discovery/... ./config/... ./adapters/file/... ./xds/...

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

## bench: Go benchmarks of xds/... and the xDS harness at a small size (bench/README.md)
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./xds/...
	$(GO) run ./bench/cmd/xdsbench -plan quick

## bench-full: every point of docs/PERFORMANCE.md against every peer (about an hour; needs `make consul`)
bench-full: consul
	$(GO) run ./bench/cmd/xdsbench -plan full

## consul: build a real Consul agent for the tests (from the Go module proxy, once)
consul: $(CONSUL)

$(CONSUL):
	bash tools/consul/build.sh

## deps: Debian's redis-server and chromium, when missing (root and apt-get)
deps:
	sh tools/test-deps.sh

clean:
	rm -rf $(BIN) .bowline-data
