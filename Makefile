# make demo: set up .venv and scan the embedded default model; make test: set up and run the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/confidence-neurons scan --n-seqs 6 --out runs/demo

test: $(STAMP)
	$(BIN)/python -m confidence_neurons.models.embedded
	$(BIN)/python -m pytest -q -rs

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sweep.py

clean:
	rm -rf $(VENV) runs
