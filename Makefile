# The two commands of the front page (nbs/index.ipynb, README.md):  `make demo` (the main job) and `make test` (every test).
# `make help` lists every target.
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
export PYTHONWARNINGS ?= ignore::DeprecationWarning

.PHONY: help setup demo docs-proc test test-all test-slow export-check clean-check docs-check nbs-test pytest run-nbs clean-nbs readme results-fmnist

## this list
help:
	@awk '/^## /{d=(d ? d " " : "") substr($$0,4); next} /^[a-z][a-z-]*:/{if(d){sub(/:.*/,"",$$1); printf "  make %-15s %s\n",$$1,d}; d=""}' $(MAKEFILE_LIST)

## the virtual environment (.venv) with ltat installed, and Fashion-MNIST from Debian
setup: $(VENV)/.ready
$(VENV)/.ready: pyproject.toml tools/setup.sh tools/constraints.txt tools/tv_shim.py
	bash tools/setup.sh
	touch $@

## main job: PGD-AT beside long-tailed methods on Fashion-MNIST-LT (IR=100) on the CPU; table, plot and cards in runs/demo/
demo: setup
	$(BIN)/ltat demo --out runs/demo

## the Fashion-MNIST-LT table of every method (CPU, about an hour; finished rows are reused), copied without
## checkpoints to nbs/results/fmnist/ for the chapter nbs/19_fmnist_table.ipynb
results-fmnist: setup
	mkdir -p runs/reproduce nbs/results/fmnist
	set -o pipefail; $(BIN)/ltat reproduce fmnist --quiet 2>&1 | grep --line-buffered -v Warning | tee -a runs/reproduce/fmnist.log
	cd runs/reproduce/fmnist && find . -type f ! -name '*.pth' -exec cp --parents {} ../../../nbs/results/fmnist/ \;
	cp runs/reproduce/fmnist.log nbs/results/fmnist/fmnist.log

## every test: library in sync with the notebooks, notebooks clean, docs site consistent, every notebook runs (CPU), pytest
test: setup export-check clean-check docs-check nbs-test pytest

## ltat/ is what nbdev-export writes from nbs/
export-check:
	@rm -rf /tmp/ltat-export-check && cp -r ltat /tmp/ltat-export-check
	$(BIN)/nbdev-export
	@diff -r -x __pycache__ /tmp/ltat-export-check ltat > /dev/null || \
	  { echo "ltat/ is out of sync with nbs/: run nbdev-export and commit"; diff -r -x __pycache__ /tmp/ltat-export-check ltat | head -40; exit 1; }
	@echo "export-check: ltat/ is in sync with nbs/"

## nbdev-clean would change no notebook (checked on a copy: the tree is not touched)
clean-check:
	$(BIN)/python tools/check_docs.py clean

## the docs site: sidebar complete, every link and #anchor resolves, nbdev.yml current, nothing cites a document
## outside the repository, and nbdev's docs processing (what Quarto renders from) runs on every notebook
docs-check:
	$(BIN)/python tools/check_docs.py sidebar links nbdev_yml citations proc

## nbdev's docs processing alone (also part of docs-check)
docs-proc: setup
	$(BIN)/python tools/check_docs.py proc

## every notebook runs on the CPU (cells flagged slow or cuda skipped)
nbs-test:
	$(BIN)/nbdev-test --n-workers 2 --timing

## the tests of tests/ (README.md rendered from nbs/index.ipynb included), two files at a time (pytest-xdist; a file's
## tests share one worker, so a file's module-scoped fixture runs once)
pytest:
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

## also the cells flagged slow (long CPU runs) and cuda (need a GPU)
test-all: setup export-check clean-check docs-check
	$(BIN)/nbdev-test --n-workers 1 --timing --flags "slow cuda"
	$(BIN)/python -m pytest -q tests

## only the cells flagged slow
test-slow: setup
	$(BIN)/nbdev-test --n-workers 1 --timing --flags slow

## re-execute every notebook with the current code, store its outputs (as Jupyter shows them), clean them, render README.md
run-nbs: setup
	$(BIN)/python tools/run_nbs.py --n-workers 1 --save --flags slow
	$(BIN)/nbdev-clean
	$(BIN)/python tools/make_readme.py

## nbdev-clean every notebook (what clean-check asks for)
clean-nbs: setup
	$(BIN)/nbdev-clean

## README.md from nbs/index.ipynb, the one source of the front page
readme: setup
	$(BIN)/python tools/make_readme.py
