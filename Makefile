# Two commands on a fresh machine: `make demo` and `make test`. Only Python 3.11 and make needed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck bench peers bench-peers schema docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=/path/to/python3.11)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# The distribution was called `syncer` before; a venv holding both would list every
	@# connector twice. This venv is ours, so the old name can only be that.
	@$(BIN)/python -m pip uninstall --quiet --yes syncer >/dev/null 2>&1 || true
	@rm -rf syncer.egg-info
	$(BIN)/python -m pip install --quiet --quiet -e '.[dev,duckdb,postgres]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m syncer.demo run

# Bytecode first: the suite starts the CLI hundreds of times, and where PYTHONDONTWRITEBYTECODE
# is set each start would compile syncer again (about 0.3 s); compileall skips what is current.
test: $(STAMP)
	@$(BIN)/python -m compileall -q syncer connectors tests >/dev/null
	$(BIN)/python -m pytest -q -n auto

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check syncer connectors

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/sync_bench.py

# drt-core, the peer bench/peers_bench.py compares with, in a virtual environment of its own:
# never in .venv, so it cannot change what syncer runs with.
PEERS := bench/.peers/venv
PEERS_STAMP := $(PEERS)/.installed
PEERS_ARGS ?=

peers: $(PEERS_STAMP)

$(PEERS_STAMP):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=/path/to/python3.11)"; exit 2; }
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet drt-core==1.2.1
	@touch $(PEERS_STAMP)

# Whole processes, side by side with drt-core (1,000,000 members, three repetitions: about
# 15 minutes); e.g. make bench-peers PEERS_ARGS="--sizes 100000 --reps 1".
bench-peers: $(STAMP) $(PEERS_STAMP)
	$(BIN)/python bench/peers_bench.py $(PEERS_ARGS)

schema: $(STAMP)
	$(BIN)/syncer schema > mappings/schema.json

# The generated pages (configuration and CLI reference, schema.json), then the site, strictly.
docs: $(STAMP)
	$(BIN)/python -m syncer.docgen
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) bench/.peers .syncer site .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
