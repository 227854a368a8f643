# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates or updates .venv from requirements.txt when needed, then does its job.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

# `make demo` settings (the embedded benchmark on CPU by default)
DATASET   ?= shapes
DATA_ROOT ?= data/shapes
DEVICE    ?= cpu
PROFILE   ?= demo

.PHONY: demo test lint teacher report clean-venv

# The virtual environment: rebuilt only when requirements.txt or pyproject.toml change.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m kdlib demo --dataset $(DATASET) --data-root $(DATA_ROOT) --device $(DEVICE) --profile $(PROFILE)

test: $(STAMP)
	$(PY) -m ruff check kdlib tests
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check kdlib tests
	$(PY) -m ruff format --check kdlib tests

teacher: $(STAMP)
	$(PY) -m kdlib teacher --data-root data/shapes

report: $(STAMP)
	$(PY) -m kdlib report

clean-venv:
	rm -rf $(VENV)
