# vigil — `make run` shows it working on the embedded default; `make test` runs every test.
GO      ?= go
TOOLS   ?= $(CURDIR)/.tools
BIN     := $(CURDIR)/bin
export PATH := $(TOOLS):$(PATH)

CONSUL_VERSION     := v1.22.7
CONSUL_API_VERSION := v1.34.1
COREDNS_VERSION    := v1.15.0
# deployments/: kubeconform, and the Kubernetes OpenAPI documents its schemas are made from.
KUBECONFORM_VERSION := v0.7.0
K8S_OPENAPI_MODULE  := k8s.io/client-go@v0.34.1
K8S_SCHEMAS_STAMP   := $(TOOLS)/k8s-schemas/.$(subst /,_,$(K8S_OPENAPI_MODULE))
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: build run test bench bench-failover bench-forward bench-footprint bench-consul-fleet chaos soak lint fuzz deps tools clean
build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/vigil ./cmd/vigil

# The first README command: vigil on the embedded default with demo instances that fail and recover.
run: build
	$(BIN)/vigil run --demo

# The second README command: every test, with the race detector, against the real peers.
test: deps tools
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 30m ./...
	cd deployments && $(GO) vet ./... && $(GO) test -race -count=1 -timeout 10m ./...

bench: deps tools $(TOOLS)/coredns build
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 60m ./...

# Failover on every path (vigil DNS and xDS at two settings, Consul DNS) under SIGKILL and SIGSTOP,
# about 5 minutes; writes docs/failover/ (report and SVG timelines). QUICK=1: a few events, ~1 minute.
bench-failover: tools
	VIGIL_FAILOVER_OUT=$(CURDIR)/docs/failover $(if $(QUICK),VIGIL_FAILOVER_QUICK=1 VIGIL_FAILOVER_OUT=$(CURDIR)/bin/failover-quick) $(if $(PATHS),VIGIL_FAILOVER_PATHS=$(PATHS)) \
	  $(GO) test -run '^$$' -bench BenchmarkFailover -benchtime 1x -count 1 -timeout 20m -v ./internal/bench/failover/

# vigil's forwarder against HAProxy (mode tcp, leastconn) and a direct connection, on the same
# loopback backends: 5 interleaved rounds, ~2 minutes. QUICK=1: 3 small rounds, ~30 s.
bench-forward: deps
	$(if $(QUICK),VIGIL_FORWARD_QUICK=1) $(GO) test -run '^$$' -bench BenchmarkForward -benchtime 1x -count 1 -timeout 15m -v ./internal/bench/forward/

# What vigil costs a pod: CPU per probe (every kind), cores, scheduling lag, RSS, the backend's CPU per
# probe at 30/300/3,000 instances, and idle CPU, against a Consul agent's HTTP checks; ~4 minutes.
# QUICK=1: one short round, ~1 minute. (Also part of `make bench`.)
bench-footprint: tools
	$(if $(QUICK),VIGIL_FOOTPRINT_QUICK=1) $(GO) test -run '^$$' -bench BenchmarkFootprint -benchtime 1x -count 1 -timeout 20m -v ./internal/bench/footprint/

# The chaos run (internal/chaos): vigil, a 3-server Consul cluster and backends of three kinds on
# 127.88.0.0/16; faults at random while clients use DNS, xDS, the forwarder and the admin API, and
# invariants checked throughout. `make test` runs a 1-minute form; SEED= replays a run's faults.
DURATION ?= 5m
chaos: deps tools
	mkdir -p $(BIN)
	VIGIL_CHAOS_DURATION=$(DURATION) $(if $(SEED),VIGIL_CHAOS_SEED=$(SEED)) VIGIL_CHAOS_REPORT=$(CURDIR)/bin/chaos-report.md \
	  $(GO) test -run '^TestChaos$$' -count 1 -timeout 0 -v ./internal/chaos/

# The soak (not in CI): load, instance churn and reloads for DURATION; vigil's memory, goroutines
# and open fds sampled and reported as slopes, which must stay flat.
soak: deps tools
	mkdir -p $(BIN)
	VIGIL_SOAK_DURATION=$(DURATION) VIGIL_CHAOS_REPORT=$(CURDIR)/bin/soak-report.md \
	  $(GO) test -run '^TestSoak$$' -count 1 -timeout 0 -v ./internal/chaos/

# Consul load of 100 vigils × 50 upstreams (3 servers, one client agent) with blocking queries, the
# agent cache and streaming, interleaved, 2 rounds, ~4 minutes; QUICK=1: one short round, ~1.5 minutes.
bench-consul-fleet: tools
	$(if $(QUICK),VIGIL_CONSULFLEET_QUICK=1) $(GO) test -run '^$$' -bench BenchmarkConsulFleet -benchtime 1x -count 1 -timeout 15m -v ./internal/bench/consulfleet/

lint:
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet ./...
	cd deployments && $(GO) vet ./...

# Each fuzz target runs FUZZTIME; a new input is minimized for at most FUZZMINIMIZETIME (with the
# default 60s, a package as large as configs spends its whole FUZZTIME minimizing).
FUZZTIME ?= 30s
FUZZMINIMIZETIME ?= 5s
fuzz:
	@for p in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
	  for f in $$(grep -h '^func Fuzz' $$p/*_test.go | sed 's/func \(Fuzz[A-Za-z0-9_]*\).*/\1/'); do \
	    echo "fuzz $$p $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) $$p || exit 1; \
	  done; done

# Debian packages the tests and benchmarks use: dig, dnsperf, promtool, chromium, python3 (a failover backend),
# haproxy and strace (the forwarder benchmark).
APT_PKGS :=
ifeq ($(shell command -v python3),)
APT_PKGS += python3
endif
ifeq ($(shell command -v dig),)
APT_PKGS += dnsutils
endif
ifeq ($(shell command -v dnsperf),)
APT_PKGS += dnsperf
endif
ifeq ($(shell command -v promtool),)
APT_PKGS += prometheus
endif
ifeq ($(shell command -v chromium),)
APT_PKGS += chromium
endif
ifeq ($(shell command -v haproxy),)
APT_PKGS += haproxy
endif
ifeq ($(shell command -v strace),)
APT_PKGS += strace
endif
ifeq ($(shell command -v systemd-analyze),)
APT_PKGS += systemd
endif
deps:
ifneq ($(strip $(APT_PKGS)),)
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PKGS)
endif

tools: $(TOOLS)/consul $(TOOLS)/kubeconform $(K8S_SCHEMAS_STAMP)

# Consul, built from the Go module proxy at a pinned version (the api pin is needed:
# v1.22.7's own go.mod asks for an api version that does not compile with it).
$(TOOLS)/consul:
	mkdir -p $(TOOLS)/src/consul
	cd $(TOOLS)/src/consul && { test -f go.mod || $(GO) mod init vigil-tools-consul; } && \
	  GOFLAGS=-mod=mod $(GO) get github.com/hashicorp/consul@$(CONSUL_VERSION) github.com/hashicorp/consul/api@$(CONSUL_API_VERSION) && \
	  GOFLAGS=-mod=mod $(GO) build -o $@ github.com/hashicorp/consul

$(TOOLS)/kubeconform:
	GOBIN=$(TOOLS) $(GO) install github.com/yannh/kubeconform/cmd/kubeconform@$(KUBECONFORM_VERSION)

# Strict JSON schemas for kubeconform, written from the OpenAPI documents in a Go module (nothing
# downloaded but from the Go module proxy; nothing committed). kubeconform looks for them next to itself.
$(K8S_SCHEMAS_STAMP): deployments/kubeschema/main.go
	cd deployments && $(GO) run ./kubeschema -module $(K8S_OPENAPI_MODULE) -o $(TOOLS)/k8s-schemas
	touch '$@'

$(TOOLS)/coredns:
	GOBIN=$(TOOLS) $(GO) install github.com/coredns/coredns@$(COREDNS_VERSION)

clean:
	rm -rf $(BIN)
