# make demo: set up .venv and scan the embedded default model; make test: set up and run the tests.
# The venv gets the exact tested versions from requirements/constraints.txt (pyproject.toml only
# declares compatible ranges); torch is pinned there to 2.13.0, so no CUDA build is downloaded
# where the CPU wheel of 2.13.0 is on offer.
PYTHON      ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.installed
CONSTRAINTS := requirements/constraints.txt
LINTED      := src tests benchmarks

.PHONY: demo test lint bench constraints clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e '.[test,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/confidence-neurons scan --n-seqs 6 --out runs/demo

test: lint
	$(BIN)/python -m confidence_neurons.models.embedded
	$(BIN)/python -m pytest -q -rs

# ruff: lint with import sorting and public docstrings, and the formatter (configured in pyproject.toml); part of `test`.
lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sweep.py
	$(BIN)/python benchmarks/bench_sharded.py

# Rewrite the constraints from what .venv holds now (after changing dependencies in pyproject.toml:
# install the new set into .venv, run the tests, then `make constraints` and commit the file).
constraints:
	{ sed -n '/^#/p' $(CONSTRAINTS); \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^#' | sed 's/+cpu$$//' | sort -f; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:
	rm -rf $(VENV) runs
