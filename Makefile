# tiny-forge developer entry points. Docker-backed targets use scripts/docker-up.sh, which reuses
# a reachable engine or starts a private dockerd under $(TF_DOCKER_DIR) (default /tmp/tiny-forge-docker).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

CARGO ?= cargo
STATE_DIR ?= .tiny-forge/state
MANIFESTS ?= examples/standalone
MANAGED_LABEL := app.kubernetes.io/managed-by=tiny-forge
# The demo's controller instance: its containers carry tinyforge.dev/instance=$(INSTANCE), so
# `make clean-demo` removes those and nothing else on the engine (tests, other controllers).
INSTANCE ?= demo

# Exports DOCKER_HOST from docker-up.sh into the current recipe line (fails if docker-up fails).
WITH_DOCKER_HOST = host=$$(scripts/docker-up.sh); export "$$host"

.PHONY: help build docker-up docker-down demo-images holder-image run test test-deps lint bench bench-deps bench-peers bench-scale crds clean-demo kube-up kube-down

help:
	@echo "make build | run | test | lint | bench | bench-peers | bench-scale | crds | demo-images | holder-image | docker-up | docker-down | clean-demo"
	@echo "     chart-crds | manifests | chart-check | image | kube-up | kube-down"

build:
	$(CARGO) build --release

docker-up:
	@scripts/docker-up.sh

docker-down:
	@scripts/docker-down.sh

# A real kube-apiserver + etcd on loopback (prints the KUBECONFIG line); built on first use.
kube-up:
	@test -x $${KUBE_TEST_HOME:-$$HOME/.cache/kube-test}/bin/kube-apiserver || scripts/kube-build.sh
	@scripts/kube-up.sh

kube-down:
	@scripts/kube-down.sh

demo-images:
	@$(WITH_DOCKER_HOST); scripts/demo-images.sh

# The port holder's FROM scratch image (its own small crate, built static in seconds): the
# controller runs it for Stages with a fixed hostPort.
holder-image:
	@$(WITH_DOCKER_HOST); scripts/holder-image.sh

run: build demo-images holder-image
	@$(WITH_DOCKER_HOST); mkdir -p $(STATE_DIR); \
	echo; \
	echo "=== tiny-forge: reconciling $(MANIFESTS) on $$DOCKER_HOST (state in $(STATE_DIR))"; \
	echo "    watch it:   target/release/tiny-forge get stages -o wide"; \
	echo "    roll a tag: edit $(MANIFESTS)/stages.yaml (pinnedTag) to roll a new tag"; \
	echo "    webhook:    curl -X POST \"\$$(target/release/tiny-forge webhook url)\" -H 'content-type: application/json' -d '{\"image\":\"tiny-forge-demo:1.1.0\"}'"; \
	echo "    stop:       Ctrl-C   (containers keep running: make clean-demo; the engine: make docker-down)"; \
	echo; \
	exec target/release/tiny-forge run --manifests $(MANIFESTS) --state-dir $(STATE_DIR) --instance $(INSTANCE)

# Real parts: a private Docker engine (scripts/with-docker.sh) and a real kube-apiserver with etcd
# (scripts/with-kube.sh, built once from Debian's source package). Each is stopped afterwards only
# if this invocation started it; cargo's status is kept. The chart checks come first: the
# Kubernetes tests apply manifests/ as rendered.
test: test-deps chart-check
	scripts/with-kube.sh scripts/with-docker.sh bash -c 'scripts/demo-images.sh && scripts/holder-image.sh && TINY_FORGE_TEST_DOCKER=1 $(CARGO) test --workspace --no-fail-fast'

# Whatever the tests need from Debian (Docker, a registry, skopeo, nginx, etcd and what builds the
# kube-apiserver, Python's venv for the chart checks): installed when missing.
test-deps:
	@scripts/install-deps.sh test

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# What the benchmarks drive besides the test dependencies: wrk (load), nginx and adnanh/webhook
# (the anchors), sqlite3 (bench-peers reads the store).
bench-deps: test-deps
	@scripts/install-deps.sh wrk nginx webhook sqlite3

bench: bench-deps
	scripts/with-docker.sh bash -c 'scripts/demo-images.sh && scripts/holder-image.sh && $(CARGO) bench --bench deploy && $(CARGO) bench --bench handover && $(CARGO) bench --bench holder'
	$(CARGO) bench --bench webhook

# The webhook path beside nginx and adnanh/webhook (wrk), and standalone at 5,000 Projects with
# push → reconcile start: release binary, real Docker; each writes its table to docs/BENCHMARKS.md.
bench-peers: bench-deps
	scripts/with-docker.sh scripts/bench-peers.sh

bench-scale: bench-deps
	scripts/with-docker.sh scripts/bench-scale.sh

crds:
	@mkdir -p crds
	$(CARGO) run --quiet -- crds > crds/tinyforge.dev.yaml.tmp
	@mv crds/tinyforge.dev.yaml.tmp crds/tinyforge.dev.yaml
	@echo "wrote crds/tinyforge.dev.yaml"
	@scripts/chart-crds.sh

clean-demo:
	@$(WITH_DOCKER_HOST); \
	ids=$$(docker ps -aq --filter label=$(MANAGED_LABEL) --filter label=tinyforge.dev/instance=$(INSTANCE)); \
	if [[ -n $$ids ]]; then docker rm -f $$ids; else echo "no containers of instance $(INSTANCE)"; fi; \
	holders=$$(docker ps -aq --filter label=tinyforge.dev/port-holder=$(INSTANCE)); \
	if [[ -n $$holders ]]; then docker rm -f $$holders; fi

# --- Kubernetes packaging: Helm chart, rendered manifests, controller image -----------------------
IMAGE ?= tiny-forge:dev
IMAGE_TARGET := x86_64-unknown-linux-gnu

.PHONY: chart-crds manifests chart-check image

# charts/tiny-forge/templates/crds.yaml from crds/tinyforge.dev.yaml (run `make crds` first when
# src/api changed).
chart-crds:
	@scripts/chart-crds.sh

# manifests/tiny-forge.yaml: the chart rendered with Helm's engine (see scripts/render-chart.sh).
manifests: chart-crds
	@scripts/render-chart.sh

# Fails when a generated file is stale; lints the chart and checks several value sets.
chart-check:
	@scripts/chart-crds.sh --check
	@scripts/render-chart.sh --check
	@scripts/render-chart.sh --test

# FROM scratch image with the statically linked controller, built on the project's Docker engine.
image:
	RUSTFLAGS='-C target-feature=+crt-static' $(CARGO) build --release -p tiny-forge --bin tiny-forge --target $(IMAGE_TARGET)
	@bin=target/$(IMAGE_TARGET)/release/tiny-forge; \
	if ldd "$$bin" >/dev/null 2>&1 && ! ldd "$$bin" 2>&1 | grep -q 'statically linked'; then \
		echo "image: $$bin is dynamically linked; it cannot run FROM scratch" >&2; ldd "$$bin" >&2; exit 1; \
	fi
	@mkdir -p target/image && cp /etc/ssl/certs/ca-certificates.crt target/image/ca-certificates.crt
	@$(WITH_DOCKER_HOST); DOCKER_BUILDKIT=0 docker build -t $(IMAGE) .
	@echo "built $(IMAGE); try: docker run --rm $(IMAGE) --help"

# A longer run of the property-based fuzzers of tests/fuzz.rs (provider parsers, manifest loader,
# tag policies); `make test` runs them with 64 cases each. FUZZ_CASES=N to choose. A failure is
# shrunk and saved under proptest-regressions/: commit it, it is replayed first on every run.
FUZZ_CASES ?= 20000
.PHONY: fuzz
fuzz:
	FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release --test fuzz
