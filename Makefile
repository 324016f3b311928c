# The two commands: `make demo` (the whole lifecycle, locally, to a live endpoint) and
# `make test`. Both create the virtual environment first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo run drift-demo test lint render stop bench bench-mlserver bench-mlserver-venv clean

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

# After `make run` or `make demo` (it runs the lifecycle first if nothing serves): shifted
# traffic, the monitor, retraining on drift, a shadowed challenger, its canary (README.md).
drift-demo: setup
	$(VENV)/bin/mlkube demo drift $(if $(CONFIG),--config $(CONFIG))

# The suite in TEST_WORKERS processes (pytest-xdist; work stealing evens out the long
# end-to-end tests); TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2
test: setup
	$(VENV)/bin/ruff check plugins tests dags workflows benchmarks
	$(VENV)/bin/mlkube argo render --check
	$(VENV)/bin/mlkube platform render --check
	$(PY) -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist worksteal)

lint: setup
	$(VENV)/bin/ruff check plugins tests dags workflows benchmarks
	$(VENV)/bin/mypy

render: setup
	$(VENV)/bin/mlkube argo render
	$(VENV)/bin/mlkube platform render

stop: setup
	$(VENV)/bin/mlkube serve stop

bench: setup
	$(PY) benchmarks/lifecycle.py
	$(PY) benchmarks/dag_parse.py --repeat 15
	$(PY) benchmarks/serving.py
	$(PY) benchmarks/redeploy.py
	$(PY) benchmarks/prepare_wide.py
	$(PY) benchmarks/prepare_scale.py --sizes-gb 0.5 1 2 5
	$(PY) benchmarks/tune_vs_grid.py --repeats 10
	$(PY) benchmarks/train_vs_loop.py
	$(PY) benchmarks/tune_storage.py
	$(PY) benchmarks/ratios.py

# MLServer (the runtime KServe uses for MLflow models) against mlkube's runtime and the echo
# ceiling, medians of 3 passes (benchmarks/README.md). MLServer 1.7.1 needs older fastapi and
# starlette than Airflow accepts, so it gets its own venv, which CI never builds. mlflow is
# pinned to the main venv's (it loads the model the benchmark logs), numpy and pandas too;
# torch pinned, so pip takes the CPU wheel on disk; uvloop 0.21: with 0.22 and later MLServer's
# parallel worker process dies at start (asyncio.get_event_loop raises in it).
MLSERVER_VENV ?= .venv-mlserver
bench-mlserver-venv: $(MLSERVER_VENV)/.installed

$(MLSERVER_VENV)/.installed:
	python3 -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install -q --upgrade pip uv
	$(MLSERVER_VENV)/bin/python -m pip install -q torch==2.13.0
	$(MLSERVER_VENV)/bin/uv pip install -q --python $(MLSERVER_VENV)/bin/python mlserver==1.7.1 \
		mlserver-mlflow==1.7.1 mlflow==3.17.2 torch==2.13.0 numpy==2.4.6 pandas==3.1.1 \
		uvloop==0.21.0
	touch $@

bench-mlserver: setup bench-mlserver-venv
	$(PY) benchmarks/serving.py --passes 3 --only mlkube-v2 mlserver echo \
		--mlserver-python $(MLSERVER_VENV)/bin/python --mlserver-configs 0 0/1 1

clean:
	-$(VENV)/bin/mlkube serve stop
	rm -rf .mlkube

# The three images, named as the manifests name them by default (mlkube.spec IMAGE_REPOSITORY
# and the package version); README.md, "Images". BASE_IMAGE and PIP_INDEX_URL go to all three,
# TORCH_INDEX_URL and TORCH_WHEELS to the CPU images, GPU_TORCH_INDEX_URL and GPU_TORCH_WHEELS
# to the trainer; a variable left unset keeps the Dockerfile's default, one set empty passes "".
DOCKER ?= docker
IMAGE_REPO ?= ghcr.io/mlkube
IMAGE_TAG ?= $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' plugins/mlkube/__init__.py)
image_arg = $(if $(filter undefined,$(origin $(2))),,--build-arg $(1)='$($(2))')
IMAGE_ARGS = $(call image_arg,BASE_IMAGE,BASE_IMAGE) $(call image_arg,PIP_INDEX_URL,PIP_INDEX_URL)
CPU_ARGS = $(IMAGE_ARGS) $(call image_arg,TORCH_INDEX_URL,TORCH_INDEX_URL) \
	$(call image_arg,TORCH_WHEELS,TORCH_WHEELS)
GPU_ARGS = $(IMAGE_ARGS) $(call image_arg,TORCH_INDEX_URL,GPU_TORCH_INDEX_URL) \
	$(call image_arg,TORCH_WHEELS,GPU_TORCH_WHEELS)

.PHONY: images
images:
	$(DOCKER) build -f docker/Dockerfile -t $(IMAGE_REPO)/mlkube:$(IMAGE_TAG) $(CPU_ARGS) .
	$(DOCKER) build -f docker/Dockerfile.gpu -t $(IMAGE_REPO)/mlkube-gpu:$(IMAGE_TAG) $(GPU_ARGS) .
	$(DOCKER) build -f docker/Dockerfile.server -t $(IMAGE_REPO)/mlkube-server:$(IMAGE_TAG) \
		$(CPU_ARGS) .
