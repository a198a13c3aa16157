# Bowline — make targets. `make run` and `make test` work on a fresh machine
# with Go installed; everything else the tests need is built here.

GO        ?= go
BIN       := bin
CONSUL    := $(BIN)/consul
TEST_TIMEOUT ?= 40m

.PHONY: build run test unit lint bench consul clean

build:
	$(GO) build -o $(BIN)/bowline ./cmd/bowline

## run: start bowline server on the quickstart example (file registry only)
run: build
	$(BIN)/bowline server --config examples/quickstart --data-dir .bowline-data

## test: vet, then every test with the race detector (builds Consul for its tests)
test: consul lint
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

## unit: the tests without building Consul (the Consul tests fail without it)
unit:
	$(GO) test -race -count=1 ./discovery/... ./config/... ./adapters/file/... ./xds/...

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

## consul: build a real Consul agent for the tests (from the Go module proxy, once)
consul: $(CONSUL)

$(CONSUL):
	bash tools/consul/build.sh

clean:
	rm -rf $(BIN) .bowline-data
