# The README's two commands: `make demo` (the main job on the embedded model) and `make test`.
# Both do all set-up on a fresh machine and are quick the second time (stamp files).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
# llama-cpp-python has no wheel on PyPI and takes minutes to compile: build it once per machine
# into a wheelhouse that every checkout's set-up reuses.
LLAMA_CPP := llama-cpp-python==0.3.36
WHEELHOUSE ?= $(HOME)/.cache/infinisynth/wheels

export AIRFLOW_HOME := $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False

.PHONY: setup demo test check ui model-server lint-service bench lock clean env

ESLINT_STAMP := tools/eslint/node_modules/.installed

setup: $(VENV)/.installed $(AIRFLOW_HOME)/.initialized $(ESLINT_STAMP)

# System packages first (only what is missing), then the pinned Python environment. torch comes
# first from the machine's CPU wheel so nothing pulls the CUDA build.
$(VENV)/.installed: requirements.txt pyproject.toml scripts/system-deps.sh
	bash scripts/system-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(PY) -m pip install --quiet --no-deps torch==2.13.0
	ls $(WHEELHOUSE)/llama_cpp_python-0.3.36-*.whl > /dev/null 2>&1 || \
	  $(PY) -m pip wheel --quiet --no-deps --wheel-dir $(WHEELHOUSE) $(LLAMA_CPP)
	$(VENV)/bin/uv pip sync --quiet --python $(PY) --find-links /opt/wheels --find-links $(WHEELHOUSE) requirements.txt
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -e .
	touch $@

# ESLint and its parsers for the lint gate, exactly as package-lock.json pins them (npm comes from
# scripts/system-deps.sh); --prefer-offline reuses npm's cache when the registry is unreachable.
$(ESLINT_STAMP): tools/eslint/package-lock.json $(VENV)/.installed
	npm ci --prefix tools/eslint --no-audit --no-fund --prefer-offline --loglevel=error
	touch $@

# Airflow's home inside the project, on SQLite, with the pool model calls share.
$(AIRFLOW_HOME)/.initialized: $(VENV)/.installed
	mkdir -p $(AIRFLOW_HOME)
	$(VENV)/bin/airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 || (tail -30 $(AIRFLOW_HOME)/db-migrate.log; exit 1)
	$(VENV)/bin/airflow pools set llm 4 "Concurrent model-calling tasks" > /dev/null
	touch $@

demo: setup
	$(PY) -m infinisynth.demo

# Code checks first (seconds), then every test.
test: setup check
	$(PY) -m pytest

check: setup
	$(VENV)/bin/ruff check src dags tests benchmarks
	$(VENV)/bin/ruff format --check src dags tests benchmarks
	$(VENV)/bin/mypy

# The Airflow UI and a scheduler on this machine. standalone starts its components from PATH.
ui: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH AIRFLOW__CORE__PARALLELISM=$${AIRFLOW__CORE__PARALLELISM:-4} $(VENV)/bin/airflow standalone

model-server: setup
	$(PY) -m infinisynth.model_server

# The lint gate as an HTTP sidecar (docs/LINT_GATE.md), in the foreground.
lint-service: setup
	$(PY) -m infinisynth.verify.service --host 127.0.0.1 --port $(or $(PORT),8787)

bench: setup
	$(PY) benchmarks/bench_llm_client.py
	$(PY) benchmarks/bench_code_pipeline.py
	$(PY) benchmarks/bench_lint_gate.py
	$(PY) benchmarks/bench_subject_scale.py
	$(PY) benchmarks/bench_role_limits.py
	$(PY) benchmarks/bench_release.py
	$(PY) benchmarks/bench_hnsw.py

# The production stack's .env with fresh strong secrets (standard library only; never overwrites).
env:
	$(PYTHON) scripts/stack_secrets.py generate

# Re-resolve requirements.in into the fully pinned requirements.txt.
lock: $(VENV)/.installed
	$(VENV)/bin/uv pip compile requirements.in -o requirements.txt --python $(PY) --find-links /opt/wheels --no-header

clean:
	rm -rf $(VENV) $(AIRFLOW_HOME) data
