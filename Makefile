# wsnode: `make run` starts one embedded pod; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SRC    := wsnode wsctl tests $(wildcard bench loadtests)
STAMP  := $(VENV)/.installed

.PHONY: run test lint unit fmt services clean cluster bench

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	@scripts/dev-run.sh

services:
	@scripts/ensure-services.sh

lint: $(STAMP)
	$(BIN)/ruff check $(SRC)
	$(BIN)/mypy

test: $(STAMP) services lint
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

fmt: $(STAMP)
	$(BIN)/ruff check --fix $(SRC)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info

# docker-compose.yml's topology on loopback, in the foreground: three pods behind
# haproxy (deploy/haproxy/haproxy.cfg) on ws://127.0.0.1:8080/ws. Ctrl-C stops it.
# HA=1: highly available backends of their own (a 3-node RabbitMQ cluster, Redis Sentinel).
cluster: $(STAMP) services
	@scripts/ensure-haproxy.sh
	@CLUSTER_HA=$(HA) $(BIN)/python scripts/cluster.py

# Every benchmark of bench/ (about 10 minutes on 2 cores; run it on a quiet
# machine): JSON lines on stdout and in bench/results/latest.jsonl.
bench: $(STAMP) services
	@mkdir -p bench/results
	$(BIN)/python bench/run_all.py | tee bench/results/latest.jsonl

# Randomized chaos soak, not part of `make test` (MINUTES of faults, then a bounded
# settle and the check): 3 pods, a private Redis, the shared RabbitMQ through proxies
# it cuts. One-screen summary; figures in bench/results/chaos-latest.json; exits 1
# when an accepted ACK-required message was lost. CHAOS_ARGS: see --help.
.PHONY: chaos
MINUTES ?= 5
chaos: $(STAMP) services
	$(BIN)/python -m bench.chaos --minutes $(MINUTES) $(CHAOS_ARGS)
