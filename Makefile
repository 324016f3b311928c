# The two commands: `make demo` (the whole lifecycle, locally, to a live endpoint) and
# `make test`. Both create the virtual environment first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo run test lint render stop bench clean

setup: $(STAMP)

# torch is installed by pip, pinned: pip takes the CPU wheel this machine keeps on disk,
# where an unpinned install (or uv) would download a multi-GB CUDA build. uv installs the rest,
# compiling bytecode: uv does not by default, and where PYTHONDONTWRITEBYTECODE is set every
# step process would otherwise compile mlflow, torch and pandas again (seconds per process).
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	$(PY) -m pip install -q torch==2.13.0
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -e '.[all,dev]'
	touch $@

# dags/ml_lifecycle.py through real Airflow (dag.test, local backend) to a live endpoint.
# Airflow's log goes to .mlkube/airflow/demo.log; VERBOSE=1 prints it instead.
demo: setup
	$(PY) -m mlkube.airflow.demo $(if $(CONFIG),--config $(CONFIG)) $(if $(filter-out 0,$(VERBOSE)),--verbose)

# The same five steps without Airflow: the local runner.
run: setup
	$(VENV)/bin/mlkube run $(if $(CONFIG),--config $(CONFIG))

test: setup
	$(VENV)/bin/ruff check plugins tests dags workflows benchmarks
	$(VENV)/bin/mlkube argo render --check
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check plugins tests dags workflows benchmarks
	$(VENV)/bin/mypy

render: setup
	$(VENV)/bin/mlkube argo render

stop: setup
	$(VENV)/bin/mlkube serve stop

bench: setup
	$(PY) benchmarks/lifecycle.py
	$(PY) benchmarks/dag_parse.py --repeat 15
	$(PY) benchmarks/serving.py
	$(PY) benchmarks/redeploy.py
	$(PY) benchmarks/prepare_wide.py
	$(PY) benchmarks/tune_vs_grid.py

clean:
	-$(VENV)/bin/mlkube serve stop
	rm -rf .mlkube
