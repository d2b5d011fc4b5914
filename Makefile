# `make test` and `make demo` work on a fresh clone: both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test check lint typecheck demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest --cov --cov-report=term-missing --cov-fail-under=90 $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(PY) -m mypy

check: lint typecheck test

demo: $(STAMP)
	$(PY) -m examples.icy_backend

bench: $(STAMP)
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/run_parts.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/health_endpoint.py
	$(PY) benchmarks/status_page.py
	$(PY) benchmarks/dead_collector.py
	$(PY) benchmarks/redaction.py
	$(PY) benchmarks/store.py

clean:
	rm -rf $(VENV) .coverage .mypy_cache .ruff_cache .pytest_cache htmlcov
