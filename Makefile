# The two commands of the README:  `make demo` (the main job) and `make test` (every test).
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
export PYTHONWARNINGS ?= ignore::DeprecationWarning

.PHONY: setup demo test test-all test-slow export-check nbs-test pytest docs-check clean-nbs results-fmnist

setup: $(VENV)/.ready
$(VENV)/.ready: pyproject.toml tools/setup.sh tools/constraints.txt tools/tv_shim.py
	bash tools/setup.sh
	touch $@

## main job: train PGD-AT and TRADES on Fashion-MNIST-LT (IR=100) on the CPU, evaluate, write runs/demo/
demo: setup
	$(BIN)/ltat demo --out runs/demo

## the Fashion-MNIST-LT table of every method (CPU, about an hour; finished rows are reused), copied without
## checkpoints to nbs/results/fmnist/ for the chapter nbs/19_fmnist_table.ipynb
results-fmnist: setup
	mkdir -p runs/reproduce nbs/results/fmnist
	set -o pipefail; $(BIN)/ltat reproduce fmnist --quiet 2>&1 | grep --line-buffered -v Warning | tee -a runs/reproduce/fmnist.log
	cd runs/reproduce/fmnist && find . -type f ! -name '*.pth' -exec cp --parents {} ../../../nbs/results/fmnist/ \;
	cp runs/reproduce/fmnist.log nbs/results/fmnist/fmnist.log

## every test: library in sync with the notebooks, every notebook runs (CPU), pytest
test: setup export-check nbs-test pytest

export-check:
	@rm -rf /tmp/ltat-export-check && cp -r ltat /tmp/ltat-export-check
	$(BIN)/nbdev-export
	@diff -r -x __pycache__ /tmp/ltat-export-check ltat > /dev/null || \
	  { echo "ltat/ is out of sync with nbs/: run nbdev-export and commit"; diff -r -x __pycache__ /tmp/ltat-export-check ltat | head -40; exit 1; }
	@echo "export-check: ltat/ is in sync with nbs/"

nbs-test:
	$(BIN)/nbdev-test --n-workers 2 --timing

pytest:
	$(BIN)/python -m pytest -q tests

## also the cells flagged slow (long CPU runs) and cuda (need a GPU)
test-all: setup export-check
	$(BIN)/nbdev-test --n-workers 1 --timing --flags "slow cuda"
	$(BIN)/python -m pytest -q tests

test-slow: setup
	$(BIN)/nbdev-test --n-workers 1 --timing --flags slow

## re-execute every notebook and store its outputs (slow cells included)
run-nbs: setup
	$(BIN)/nbdev-test --n-workers 1 --save --flags slow

docs-check: setup
	$(BIN)/nbdev-proc-nbs
