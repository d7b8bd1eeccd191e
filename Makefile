# wsnode: `make run` starts one embedded pod; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SRC    := wsnode wsctl tests $(wildcard bench loadtests)
STAMP  := $(VENV)/.installed

.PHONY: run test lint unit fmt services clean cluster bench peers peers-deps

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

# The suite waits on brokers, pods and timers far more than it computes: three
# pytest-xdist workers (tests/conftest.py groups the tests) take it from ~9 to
# ~4 minutes on 2 cores. TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 3
test: $(STAMP) services lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

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

# (Defined before `bench`: make expands a rule's prerequisites as it reads it.)
# The peers of bench/closed_loop.py (socket.io 4.8 + @socket.io/redis-adapter on
# Node.js >= 20) from npm, into bench/peers/node_modules, as package-lock.json pins them
# (no install scripts: bufferutil ships its prebuilt binary in the package).
PEERS_DEPS := bench/peers/node_modules/.package-lock.json
$(PEERS_DEPS): bench/peers/package.json bench/peers/package-lock.json
	cd bench/peers && npm ci --ignore-scripts --no-audit --no-fund
	@touch $(PEERS_DEPS)
peers-deps: $(PEERS_DEPS)

# Every benchmark of bench/ (about 10 minutes on 2 cores; run it on a quiet
# machine): JSON lines on stdout and in bench/results/latest.jsonl.
bench: $(STAMP) services $(PEERS_DEPS)
	@mkdir -p bench/results
	$(BIN)/python bench/run_all.py | tee bench/results/latest.jsonl

# wsnode against socket.io on Node.js and python-socketio, same load client, same run
# (about 6 minutes a run, then 4 for the interleaved rounds): the closed loop, its
# fixed-rate and ACK modes, the burst, 2 vs 4 pods, and wsnode and socket.io with
# their windows interleaved. JSON lines on stdout and in bench/results/peers-latest.jsonl.
RUNS ?= 1
peers: $(STAMP) services $(PEERS_DEPS)
	@mkdir -p bench/results
	$(BIN)/python bench/run_all.py --only peers --runs $(RUNS) | tee bench/results/peers-latest.jsonl

# Randomized chaos soak, not part of `make test` (MINUTES of faults, then a bounded
# settle and the check): 3 pods, a private Redis, the shared RabbitMQ through proxies
# it cuts. One-screen summary; figures in bench/results/chaos-latest.json; exits 1
# when an accepted ACK-required message was lost. CHAOS_ARGS: see --help.
.PHONY: chaos
MINUTES ?= 5
chaos: $(STAMP) services
	$(BIN)/python -m bench.chaos --minutes $(MINUTES) $(CHAOS_ARGS)
