# `make test` and `make demo` each set everything up on a fresh machine first (venv, pip, npm install).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Debian's packages the tests need beyond Python and Node: Prometheus (its server and promtool) checks
# the metrics and runs every dashboard query; redis-server is the Redis the shared-state tests (and
# `make bench-shared`) start on a loopback port of their own.
APT_TOOLS := prometheus redis-server
# The command each package provides: any one missing installs them all.
APT_COMMANDS := prometheus promtool redis-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup tools test lint demo bench bench-soak bench-shared clean

setup: $(VENV)/.installed node_modules/.installed

tools:
	@(for tool in $(APT_COMMANDS); do command -v $$tool >/dev/null || exit 1; done) || { \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_TOOLS); }

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# `npm install` rather than `npm ci`: the lockfile pins every version, but `npm ci` also insists on the
# other platforms' optional anvil binaries, which some registry mirrors do not carry.
node_modules/.installed: package.json package-lock.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

lint: setup
	$(BIN)/ruff check router tests bench
	$(BIN)/ruff format --check router tests bench
	$(BIN)/mypy

test: lint tools
	$(BIN)/pytest

# One provider of each kind, its model named for what it does, so that every route of the gateway answers.
DEMO_PROVIDERS := --providers 5 \
	--service-type chatbot --model demo-chat \
	--service-type embedding --model demo-embedding \
	--service-type text-to-image --model demo-text-to-image \
	--service-type image-editing --model demo-image-editing \
	--service-type speech-to-text --model demo-speech-to-text

demo: setup
	$(BIN)/zg-router devnet --serve --gateway-port 8080 $(DEMO_PROVIDERS)

# The bare hop and both gateways (verification off and on) in one run, then issue 18's goals.
bench: setup
	$(BIN)/python bench/bench.py

# One gateway at 100 req/s for MINUTES minutes: RSS and CPU per request each minute, then flat or not.
MINUTES ?= 10
bench-soak: setup
	$(BIN)/python bench/bench.py --soak --minutes $(MINUTES)

# The gateway admitting through Redis against the same gateway in memory (bench/shared.py).
bench-shared: setup tools
	$(BIN)/python bench/shared.py

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache
