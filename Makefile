# The whole set-up for a newcomer: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-cpu test-cudasim test-ptx check install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## run: install into .venv, show the backend, run the demo pipeline
run: $(STAMP)
	$(BIN)/gpustream info
	$(BIN)/gpustream demo

## test: the suite on the CPU backend, then under the CUDA simulator, then PTX for sm_80/sm_90
test: test-cpu test-cudasim test-ptx

test-cpu: $(STAMP)
	$(BIN)/python -m pytest -m "not cudasim and not ptx"

test-cudasim: $(STAMP)
	NUMBA_ENABLE_CUDASIM=1 $(BIN)/python -m pytest -m cudasim

test-ptx: $(STAMP)
	$(BIN)/python -m pytest -m ptx

## check: ruff and mypy (the CPU test step runs them too)
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
