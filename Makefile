# fracture: `make demo` trains and explains a model on synthetic MURA-format data; `make test` runs
# every test, notebooks included. Both create .venv and install what they need on first use.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export KERAS_BACKEND ?= tensorflow
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1
export MLFLOW_DISABLE_TELEMETRY ?= true

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# Two stamps: `make demo` installs requirements.txt only (TensorFlow-CPU, Keras, MLflow, ...);
# `make test` adds requirements-dev.txt (JAX, PyTorch CPU, pytest, nbval, Playwright).
# GPU=tf or GPU=jax swaps in the CUDA build (requirements-gpu-*.txt; docs/backends.md).
GPU ?=
DEMO_STAMP := $(VENV)/.installed-demo$(if $(GPU),-gpu-$(GPU))

$(DEMO_STAMP): requirements.txt constraints.txt pyproject.toml $(if $(GPU),requirements-gpu-$(GPU).txt)
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=python3.x)"; exit 1; }
	@case "$(GPU)" in ""|tf|jax) ;; *) echo "GPU=$(GPU): use GPU=tf or GPU=jax"; exit 1;; esac
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	if [ "$(GPU)" = tf ]; then $(PY) -m pip uninstall -q -y tensorflow-cpu; fi
	if [ -n "$(GPU)" ]; then $(PY) -m pip install -q -r requirements-gpu-$(GPU).txt; fi
	$(PY) -m pip install -q --no-deps -e .
	touch $(DEMO_STAMP)

# PyTorch's CPU build comes from PyTorch's own index (PyPI's Linux wheel is the CUDA one), asked
# for torch alone (--no-deps: one lookup there; its small dependencies come from PyPI next).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_VERSION := $(shell sed -n 's/^torch==//p' constraints.txt)

$(STAMP): $(DEMO_STAMP) requirements-dev.txt
	$(PY) -m pip install -q --no-deps "torch==$(TORCH_VERSION)" --index-url $(TORCH_INDEX)
	$(PY) -m pip install -q -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

venv: $(STAMP) ## create .venv with TensorFlow-CPU, JAX, PyTorch-CPU and the test tools (GPU=tf|jax: CUDA builds)

browser: ## install Debian's Chromium for the web-app browser test (system package: needs root/apt; .ci/run calls this)
	@if command -v chromium >/dev/null; then echo "chromium present: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
		&& echo "installed $$(chromium --version)"; \
	else echo "chromium not installed and no root apt: the browser test will be skipped with that reason"; fi

# The demo's data (docs/benchmarks.md, "Demo levers"). The stamp names a checksum of these
# arguments, so data made by an older `make data` with other arguments is made again.
SYNTH_ARGS := --patients 150 --seed 0 --difficulty 'easy,hairline=0.1'
# The stamp also sums fracture/synth.py: a changed generator (e.g. new box files) remakes the data.
SYNTH_STAMP := data/synthetic/.synth-$(shell { printf '%s' "$(SYNTH_ARGS)"; cat fracture/synth.py; } | cksum | cut -d' ' -f1)

$(SYNTH_STAMP): | $(DEMO_STAMP)
	$(PY) -m fracture synth --out data/synthetic $(SYNTH_ARGS)
	rm -f data/synthetic/.synth-*
	touch $@

data: $(SYNTH_STAMP) ## generate the synthetic MURA-format dataset in data/synthetic

# One run folder per `make demo` (a timestamped name; DEMO_RUN=name to choose it), evaluated and
# explained by name, then checked against the range documented over seeds (benchmarks/demo.py).
# DEMO_ARGS passes key=value overrides to train, e.g. DEMO_ARGS="seed=3".
DEMO_RUN ?=
ifeq ($(strip $(DEMO_RUN)),)
DEMO_RUN := demo-$(shell date +%Y%m%d-%H%M%S)
endif
DEMO_RUNS_DIR ?= saved_models
DEMO_ARGS ?=
DEMO_DIR := $(DEMO_RUNS_DIR)/$(DEMO_RUN)

demo: $(DEMO_STAMP) data ## synthetic data -> train DenseNet121 -> evaluate -> Grad-CAM pointing game -> CAM panels -> <run>/report.html -> check against the documented range
	$(PY) -m fracture train --config configs/demo.yaml run_name=$(DEMO_RUN) runs_dir=$(DEMO_RUNS_DIR) $(DEMO_ARGS)
	$(PY) -m fracture evaluate --run $(DEMO_DIR) --split test
	$(PY) -m fracture cam --run $(DEMO_DIR) --evaluate --layers relu --methods gradcam --steps 0
	$(PY) -m fracture cam --run $(DEMO_DIR) --limit 4 --layers relu,pool4_relu,pool3_relu --methods gradcam,layercam
	$(PY) -m fracture report --run $(DEMO_DIR)
	$(PY) benchmarks/demo.py --check $(DEMO_DIR)

# Three steps run side by side (make -j), because each alone leaves a core idle part of the time
# (the notebooks' kernel, the backends' compiles, the workers' last files): the TensorFlow suite on
# TEST_WORKERS pytest-xdist workers (a test file per worker at a time, its module fixtures built
# once; each worker builds the session's tiny trained run for itself), the notebooks, and the
# backend-marked tests under JAX and then PyTorch (only the files that have them are collected).
# make -O prints each step's output whole when it ends. Side by side, each process computes on one
# thread (OpenMP for PyTorch, TensorFlow's and XLA's own pools): with more threads than cores,
# PyTorch's OpenMP threads spin while they wait and the PyTorch step took twice as long. A value you
# set yourself wins. TEST_JOBS=1 runs the steps one after the other with the libraries' own thread
# counts; TEST_WORKERS=0 runs the TensorFlow suite in one process. Timings: docs/benchmarks.md,
# "The test suite".
TEST_WORKERS ?= 2
TEST_JOBS ?= 3
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
BACKEND_TESTS = $(shell grep -l 'mark.backend' tests/test_*.py)
ONE_THREAD := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} TF_NUM_INTRAOP_THREADS=$${TF_NUM_INTRAOP_THREADS:-1} \
	XLA_FLAGS="$${XLA_FLAGS:-} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

test: $(STAMP) ## every test: the TensorFlow suite, the backend tests on JAX and PyTorch, the notebooks with pytest --nbval (side by side)
	@$(if $(filter 1,$(TEST_JOBS)),,$(ONE_THREAD)) $(MAKE) --no-print-directory -j $(TEST_JOBS) -O test-tensorflow test-backends test-notebooks

test-tensorflow: $(STAMP)
	$(PY) -m pytest tests -q $(XDIST) --durations=10

test-backends: $(STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest $(BACKEND_TESTS) -q -m backend -p no:xdist
	KERAS_BACKEND=torch $(PY) -m pytest $(BACKEND_TESTS) -q -m backend -p no:xdist

test-notebooks: $(STAMP)
	$(PY) -m pytest --nbval notebooks -q

# The notebooks name the standard kernel `python3`: the .venv's JupyterLab runs it with the .venv's
# Python, so a fresh `make lab` opens them without asking for a kernel.
kernel: $(STAMP) ## for a Jupyter installed elsewhere: register this .venv's Python as the kernel "Python (fracture)"
	$(PY) -m ipykernel install --user --name fracture --display-name "Python (fracture)"

lab: $(STAMP) ## JupyterLab on notebooks/ (edit the .ipynb or its paired .py: jupytext keeps both in step)
	$(VENV)/bin/jupyter lab notebooks

# The stored outputs come from the full profile: the demo recipe's run (make demo first).
notebooks: $(STAMP) ## take edits from each notebook's .py, then execute them in place in the full profile (reuses make demo's run)
	$(VENV)/bin/jupytext --sync notebooks/[0-9]*.py
	for nb in notebooks/[0-9]*.ipynb; do \
		$(VENV)/bin/jupyter execute --inplace --timeout=3600 $$nb || exit 1; done

notebooks-smoke: $(STAMP) ## run the notebooks with papermill -p profile smoke into a temp folder (~3 min; stored outputs untouched)
	out=$$(mktemp -d); for nb in notebooks/[0-9]*.ipynb; do \
		$(VENV)/bin/papermill -k python3 -p profile smoke --cwd notebooks $$nb $$out/$$(basename $$nb) || exit 1; done; \
	echo "executed notebooks in $$out"

benchmarks: $(STAMP) data ## throughput and CAM-cost benchmarks (results in docs/benchmarks.md)
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/cam.py

mlflow-ui: $(STAMP) ## browse the experiment store at http://127.0.0.1:5000
	$(VENV)/bin/mlflow ui

clean: ## remove what can be regenerated: synthetic data, decode cache, CAM maps, test caches (keeps runs, MLflow, .venv)
	rm -rf data/synthetic data/processed layer_outputs/*/ .pytest_cache

clean-runs: ## remove every trained run and the MLflow store (asks first; FORCE=1 skips the question)
	@if [ "$(FORCE)" != 1 ]; then \
		read -r -p "delete saved_models/*/, mlflow.db and mlruns/ for good? [y/N] " answer; \
		[ "$$answer" = y ] || [ "$$answer" = Y ] || { echo "kept them"; exit 1; }; fi
	rm -rf saved_models/*/ mlruns mlflow.db

.PHONY: help venv browser data demo test test-tensorflow test-backends test-notebooks kernel lab notebooks notebooks-smoke benchmarks mlflow-ui clean clean-runs
