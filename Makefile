# Two entry points (see README): `make run` (the full pipeline) and `make test`.
# Both set up first; set-up is idempotent: it reuses .venv and reinstalls only when
# pyproject.toml or constraints.txt changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export DVC_NO_ANALYTICS := 1
# Stage commands in dvc.yaml and the Snakefile say `python`: with the venv first on PATH,
# DVC and Snakemake run them with the interpreter that has invprop, nothing activated.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup run test lint dataset browser slurm

setup: $(STAMP) dataset

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[dev,cpu,export,slurm]'
	@touch $@

# The embedded default dataset: Debian's package, where apt is usable (root, or sudo).
dataset:
	@if [ ! -f $(FMNIST) ] && command -v apt-get >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else exit 0; fi; \
		echo "installing dataset-fashion-mnist"; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
			|| echo "warning: could not install dataset-fashion-mnist; set data.root in params.yaml"; \
	fi

# Headless Chromium for the explorer page's test (Debian's chromium and chromium-driver;
# the test skips, saying so, where they cannot be installed).
browser:
	@if [ ! -x /usr/bin/chromedriver ] && command -v apt-get >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else exit 0; fi; \
		echo "installing chromium and chromium-driver"; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null \
			|| echo "warning: could not install chromium; the explorer page's browser test will skip"; \
	fi

# A local SLURM for the cluster profile's tests (profiles/slurm/local_slurm.py): Debian's
# slurmctld, slurmd, munge, slurmdbd and MariaDB, where apt is usable as root (the tests
# skip, saying so, elsewhere: the daemons and network namespaces need root).
slurm:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		python3 profiles/slurm/local_slurm.py install --accounting \
			|| echo "warning: could not install SLURM; the tests on a local SLURM will skip"; \
	fi

run: setup
	$(BIN)/dvc repro

test: setup browser slurm
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
