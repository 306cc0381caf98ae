# Two commands do all the setup on a fresh machine:
#   make run    train NoProp-DT on MNIST (a short, time-boxed default) and print its test accuracy
#   make test   ruff, then the test suite without the tests marked slow (a couple of minutes)
# CI runs `make test` and then `make test-slow` (long real-data trainings and real processes), so the
# whole suite runs on every submission; `make test-all` does both, `make lint` ruff alone.
PYTHON ?= python3
VENV ?= .venv
# torch==2.13.0 resolves to a local CPU wheel on the machines this project is developed on. Elsewhere
# PyPI's Linux torch is a multi-GB CUDA build: install the CPU build into .venv first (README,
# "Installing torch elsewhere") and run `make run TORCH=torch`, which then installs nothing more.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: run test test-slow test-all lint bench install clean

$(BIN)/noprop: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(BIN)/noprop

run: $(BIN)/noprop
	$(BIN)/noprop train --epochs 1 --train-subset 12800 --minutes 2 --eval-runs 2

# the tests run on up to 4 processes (pytest-xdist): many of them wait on processes they start
test: $(BIN)/noprop lint
	$(BIN)/python -m pytest -q -m "not slow" -n auto --maxprocesses 4

test-slow: $(BIN)/noprop
	$(BIN)/python -m pytest -q -m slow -n auto --maxprocesses 4

test-all: test test-slow

lint: $(BIN)/noprop
	$(BIN)/ruff check .

bench: $(BIN)/noprop
	$(BIN)/noprop bench --what peak throughput memory --out bench/results/bench

clean:
	rm -rf $(VENV) runs bench/results *.egg-info
