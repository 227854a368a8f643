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
DEMO_ARGS  = --dataset $(DATASET) --data-root $(DATA_ROOT) --device $(DEVICE) --profile $(PROFILE)

.PHONY: demo test lab bench report teacher methods sweep draws budget lint clean-venv

# The virtual environment: rebuilt only when requirements.txt or pyproject.toml change.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m kdlib demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m ruff check kdlib tests
	$(PY) -m ruff format --check kdlib tests
	$(PY) -m pytest tests
	$(PY) -m kdlib smoke-notebooks --out runs/nbval >/dev/null
	$(PY) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider runs/nbval/notebooks

# JupyterLab on the notebooks, with the project's .venv as the "Python 3" kernel.
# LAB_ARGS passes options through (e.g. LAB_ARGS="--no-browser --port 8899"); as root (a container)
# JupyterLab refuses to start without --allow-root.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Time every KD method on this device (report and embedded settings): a table and report/bench.json.
bench: $(STAMP)
	$(PY) -m kdlib bench --data-root $(DATA_ROOT) --device $(DEVICE) --out report/bench.json

# The rows beyond the report (chapter 8: every method the registry adds to the report's, Hinton's T²,
# unlabeled images), trained by kdlib, then chapters 3 (feature KD's two placements), 8 and 7 and the
# report show them.
methods: $(STAMP)
	$(PY) -m kdlib methods $(DEMO_ARGS)

# The hyper-parameter map (chapter 9: T × β for response KD and the best new method, 3 seeds), then
# chapters 9 and 7 and the report: about 85 minutes on 2 CPU cores.
sweep: $(STAMP)
	$(PY) -m kdlib sweep $(DEMO_ARGS)

# The verdicts under other conditions (docs/regime.md): six methods x six seeds on two other draws of
# the benchmark (make draws); the demo's runs, then the same at 2x and 4x its budget (make budget;
# BUDGETS="1", "2" or "4" trains one part).
draws: $(STAMP)
	$(PY) -m kdlib draws --data-root $(DATA_ROOT) --device $(DEVICE) --profile $(PROFILE)

budget: $(STAMP)
	$(PY) -m kdlib budget --data-root $(DATA_ROOT) --device $(DEVICE) --profile $(PROFILE) $(if $(BUDGETS),--budgets $(BUDGETS))

# Figures, tables and report/ again from the finished runs (no notebook runs, nothing trains).
report: $(STAMP)
	$(PY) -m kdlib report $(DEMO_ARGS)

# Retrain the embedded benchmark's teacher (kdlib/teachers/): about 17 minutes on 2 CPU cores (its card
# records the training time).
teacher: $(STAMP)
	$(PY) -m kdlib teacher --data-root $(DATA_ROOT)


lint: $(STAMP)
	$(PY) -m ruff check kdlib tests
	$(PY) -m ruff format --check kdlib tests

clean-venv:
	rm -rf $(VENV)
