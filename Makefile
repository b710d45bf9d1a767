# cspflow: `make demo` runs the main job, `make test` the whole suite. Both set up first.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cspflow-setup-stamp
APT_PACKAGES := python3.11 python3.11-venv python3.11-dev slurm-wlm munge cp2k gpaw-data \
	libxc-dev libopenblas-dev liblapack-dev libfftw3-dev libopenmpi-dev build-essential pkg-config
PYTEST_ARGS ?=

.PHONY: setup system-packages demo test test-fast lint bench clean-venv

setup: $(STAMP)

# The stamp depends on pyproject.toml, so a changed dependency list re-runs the install.
$(STAMP): pyproject.toml Makefile
	@$(MAKE) --no-print-directory system-packages
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	# torch first, from the CPU wheel on local disk, so nothing pulls a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	# GPAW builds from source against Debian's libxc/BLAS/FFTW/MPI installed above.
	$(BIN)/python -m pip install -q -e '.[dev,dft]'
	@touch $(STAMP)

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

demo: setup
	$(BIN)/cspflow demo --out demo-out

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not slurm and not cp2k and not gpaw" $(PYTEST_ARGS)

# ruff (lint + format), mypy, the import layers (pyproject [tool.importlinter]) and the check
# that only cspflow/store and cspflow/dedup touch the candidates collection. CI runs it.
lint: setup
	$(BIN)/ruff check cspflow tests bench
	$(BIN)/ruff format --check cspflow tests bench
	$(BIN)/mypy cspflow
	$(BIN)/lint-imports
	$(BIN)/python .ci/check_owners.py

# throughput benchmarks (bench/README.md has the last measured tables); `cspflow bench csp` is separate
bench: setup
	$(BIN)/python bench/bench_generate.py
	$(BIN)/python bench/bench_prerelax.py
	$(BIN)/python bench/bench_engine.py

clean-venv:
	rm -rf $(VENV)
