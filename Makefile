# `make test` and `make demo` work on a fresh clone: both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The suite again on the lowest versions pyproject.toml allows: opentelemetry-sdk 1.30 and the
# OpenTelemetry packages that go with it (constraints/lowest.txt); everything else resolves
# to the newest that fits. Every extra but celery: jobpulse[celery] needs opentelemetry-sdk
# 1.44, so this run installs no Celery and skips the Celery tests, each module (or test) as
# a skip that names the reason; they run in `make test`, which has the newest SDK and where
# a missing Celery fails instead. tests/test_versions.py keeps these extras and the pins
# true to pyproject.toml.
LOWEST_VENV ?= .venv-lowest
LOWEST_PY := $(LOWEST_VENV)/bin/python
LOWEST_STAMP := $(LOWEST_VENV)/.installed-stamp
LOWEST_CONSTRAINTS := constraints/lowest.txt
LOWEST_EXTRAS := prometheus,otlp,starlette,fastapi,apscheduler,cron,server,redis,page,cli,dev

.PHONY: install install-lowest test test-lowest check lint typecheck demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest --cov --cov-report=term-missing --cov-fail-under=90 $(PYTEST_ARGS)

install-lowest: $(LOWEST_STAMP)

$(LOWEST_STAMP): pyproject.toml $(LOWEST_CONSTRAINTS)
	test -x $(LOWEST_PY) || $(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_PY) -m pip install --quiet --upgrade pip
	$(LOWEST_PY) -m pip install --quiet -c $(LOWEST_CONSTRAINTS) -e '.[$(LOWEST_EXTRAS)]'
	touch $(LOWEST_STAMP)

# No coverage threshold here: the branches for the newest versions are not taken. The
# conftest stops the run unless every pin of the constraints is what is installed.
test-lowest: $(LOWEST_STAMP)
	$(LOWEST_PY) -m pip list 2>/dev/null | grep -i '^opentelemetry'
	JOBPULSE_CONSTRAINTS=$(LOWEST_CONSTRAINTS) $(LOWEST_PY) -m pytest $(PYTEST_ARGS)

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
	rm -rf $(VENV) $(LOWEST_VENV) .coverage .mypy_cache .ruff_cache .pytest_cache htmlcov
