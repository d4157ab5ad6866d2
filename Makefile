# Two commands on a fresh machine: `make demo` and `make test`. Only Python 3.11 and make needed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck bench schema docs clean

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

schema: $(STAMP)
	$(BIN)/syncer schema > mappings/schema.json

# The generated pages (configuration and CLI reference, schema.json), then the site, strictly.
docs: $(STAMP)
	$(BIN)/python -m syncer.docgen
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) .syncer site .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
