# KIS Estimator — the two commands of the README: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := node_modules/.bin/buf
STAMP := $(VENV)/.installed


.PHONY: run test fuzz bench setup tools gen check-gen lint typecheck proto-check clients unit integration clean

setup: $(STAMP) $(BUF) tools

# promtool/prometheus (Debian `prometheus`) for the rule tests and the real-Prometheus tests;
# amtool/alertmanager (Debian `prometheus-alertmanager`) for the routing config and receiver tests;
# Go and its protoc plugins (Debian) for the generated-client test;
# the Hangul font (fonts-nanum) the 견적서 PDF embeds, and poppler-utils the document tests read it with;
# nginx, the TLS front of the scale-out test (deploy/nginx/).
# h2load (Debian `nghttp2-client`) for the benchmark's headline ceiling.
tools:
	@bash tools/ensure_debian.sh ensure_quote_tools "fonts-nanum poppler-utils" \
	  /usr/share/fonts/truetype/nanum/NanumGothic.ttf pdftotext pdftoppm
	@bash tools/ensure_debian.sh ensure_nginx nginx-light /usr/sbin/nginx
	@bash tools/ensure_prometheus.sh
	@bash tools/ensure_h2load.sh
	@bash tools/ensure_alertmanager.sh
	@bash tools/ensure_go.sh

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

$(BUF): package.json
	npm install --no-audit --no-fund --loglevel=error
	@touch $(BUF)

gen: $(STAMP)
	$(PY) tools/genproto.py 2>/dev/null

# Generated code is committed; CI regenerates it and fails on any difference.
check-gen: $(STAMP)
	@tmp=$$(mktemp -d) && $(PY) tools/genproto.py $$tmp/gen 2>/dev/null && \
	  if ! diff -r -x __pycache__ $$tmp/gen server/gen; then \
	    echo "server/gen is stale: run 'make gen' and commit"; rm -rf $$tmp; exit 1; fi; rm -rf $$tmp
	@echo "generated code up to date"

proto-check: $(BUF)
	$(BUF) lint
	$(BUF) format -d --exit-code
	@if git rev-parse --verify -q refs/heads/main >/dev/null && git cat-file -e main:buf.yaml 2>/dev/null; then \
	  $(BUF) breaking --against '.git#branch=main' && echo "buf breaking: compatible with main"; \
	else echo "buf breaking: no main branch with a proto API to compare against yet"; fi
	$(BUF) breaking --against proto/baseline/kis-estimator-v1.binpb && echo "buf breaking: compatible with the released v1 baseline"

# Go and TypeScript clients (buf.gen.yaml) into gen/go and gen/ts; examples/clients/ uses them.
clients: $(BUF) tools
	rm -rf gen && $(BUF) generate
	@echo "generated gen/go (package estimatorv1) and gen/ts (protoc-gen-es + Connect)"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

run: $(STAMP) gen
	@echo "KIS Estimator: gRPC on 127.0.0.1:8787; SQLite store in the data directory (KIS_DATA_DIR, default"
	@echo "~/.local/state/kis-estimator; the start-up log line names the file). In another shell, create a token:"
	@echo "  $(VENV)/bin/kis-estimator token create --role ESTIMATOR --name \$$USER"
	@echo "then: KIS_TOKEN=<token> $(VENV)/bin/kis-estimator estimate examples/example1.json"
	$(VENV)/bin/kis-estimator serve

test: setup check-gen proto-check lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider

# A long random fuzz of every RPC on SQLite and PostgreSQL (tests/integration/test_fuzz_every_rpc.py;
# make test runs a short fixed one). FUZZ_EXAMPLES calls per backend.
FUZZ_EXAMPLES ?= 20000
fuzz: $(STAMP)
	KIS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider \
	  tests/integration/test_fuzz_every_rpc.py tests/integration/test_fuzz.py

# Throughput/latency/CPU/memory figures of a real server process against a same-run ceiling
# (bench/README.md; not a test). ARGS="--smoke" runs every figure at tiny sizes, ARGS="--profile"
# adds py-spy profiles; results land in bench/results/.
bench: $(STAMP)
	@bash tools/ensure_h2load.sh
	$(PY) bench/bench.py $(ARGS)

clean:
	rm -rf $(VENV) node_modules var .pytest_cache .mypy_cache .ruff_cache .hypothesis
