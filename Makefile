# STARS-DFKD: the two commands of the README Quickstart.
#
#   make bench   set up (idempotent), then run the quick benchmark and print its leaderboard
#   make test    set up (idempotent), then run the test suite
#
# Set-up: a virtual environment in .venv (python3.11, else python3 >= 3.11), the torch /
# torchvision pair that installs next to spikingjelly 2.0, the project (editable, with its
# test extras), and the Debian package dataset-fashion-mnist when its files are missing and
# apt-get is usable as root. A stamp keyed on pyproject.toml's hash makes a second run start
# in seconds; editing pyproject.toml re-runs the pip step.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
SETUP_HASH := $(shell sha256sum pyproject.toml 2>/dev/null | cut -c1-16)
STAMP := $(VENV)/.setup-stamp-$(SETUP_HASH)
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist

# `make test` runs the whole suite, the end-to-end tests marked slow included (they take a
# few minutes on 2 cores); DFKD_TEST_SLOW=0 skips them, PYTEST_ARGS=... replaces the selection.
ifeq ($(DFKD_TEST_SLOW),0)
PYTEST_ARGS ?= -m "not slow"
else
PYTEST_ARGS ?=
endif

# The main job: the `quick` benchmark preset (Fashion-MNIST, small CNN teacher -> spiking
# small CNN, DeepInversion / CMI / Fast x {none, STARS}, reference rows), resumable; its
# leaderboard is printed at the end. Override with `make bench BENCH_ARGS="--preset standard"`.
# It writes to runs/quick (not committed), so a fresh clone really runs the benchmark instead
# of finding the committed rows of results/quick done; `make bench BENCH_OUT=results/quick`
# refreshes the committed copy.
BENCH_OUT ?= runs/quick
BENCH_ARGS ?=

.PHONY: help setup venv data test bench clean-venv

help:
	@echo "make bench   set up, then run the quick benchmark and print its leaderboard"
	@echo "make test    set up, then run the test suite (DFKD_TEST_SLOW=0 skips slow tests)"
	@echo "make setup   only the set-up (.venv, packages, Fashion-MNIST)"

setup: venv data

venv: $(STAMP)

$(STAMP):
	@if [ -z "$(PYTHON)" ]; then \
	  echo "error: no python3.11 or python3 found; install Python 3.11 (apt-get install python3.11 python3.11-venv)"; exit 1; fi
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "error: $(PYTHON) is older than Python 3.11 (spikingjelly 2.0 needs 3.11); install python3.11" \
	       "or run: make PYTHON=/path/to/python3.11 ..."; exit 1; }
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --disable-pip-version-check $(TORCH_PINS)
	$(PY) -m pip install --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.setup-stamp-*
	@touch $@

data:
	@if ls $(FMNIST_DIR)/train-images-idx3-ubyte* >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Fashion-MNIST missing: installing the Debian package dataset-fashion-mnist"; \
	  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y dataset-fashion-mnist; } || \
	  echo "note: could not install dataset-fashion-mnist with apt-get; see below."; \
	fi
	@ls $(FMNIST_DIR)/train-images-idx3-ubyte* >/dev/null 2>&1 || { \
	  echo "note: Fashion-MNIST is not in $(FMNIST_DIR). Get it with one of:"; \
	  echo "  sudo apt-get install dataset-fashion-mnist        (Debian/Ubuntu)"; \
	  echo "  copy train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz,"; \
	  echo "  t10k-labels-idx1-ubyte.gz into a directory and pass --data-root DIR (or set DFKD_DATA_ROOT)"; \
	  echo "  add --download to a dfkd command to fetch them with torchvision (needs network)"; }

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/dfkd bench --preset quick --out $(BENCH_OUT) $(BENCH_ARGS)
	@cat $(BENCH_OUT)/leaderboard.md

clean-venv:
	rm -rf $(VENV)
