# fracture: `make demo` trains and explains a model on synthetic MURA-format data; `make test` runs
# every test, notebooks included. Both create .venv and install what they need on first use.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYNTH := data/synthetic/MURA-v1.1
export KERAS_BACKEND ?= tensorflow
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1
export MLFLOW_DISABLE_TELEMETRY ?= true

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=python3.x)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP) ## create .venv with TensorFlow-CPU, JAX, PyTorch-CPU and the test tools

browser: ## install Debian's Chromium for the web-app browser test (system package: needs root/apt; .ci/run calls this)
	@if command -v chromium >/dev/null; then echo "chromium present: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
		&& echo "installed $$(chromium --version)"; \
	else echo "chromium not installed and no root apt: the browser test will be skipped with that reason"; fi

$(SYNTH)/train_image_paths.csv: | $(STAMP)
	$(PY) -m fracture synth --out data/synthetic --patients 300 --seed 0 --difficulty medium

data: $(SYNTH)/train_image_paths.csv ## generate the synthetic MURA-format dataset in data/synthetic

demo: $(STAMP) data ## synthetic data -> train DenseNet121 -> evaluate -> Grad-CAM pointing game -> CAM panels in layer_outputs/
	$(PY) -m fracture train --config configs/demo.yaml
	$(PY) -m fracture evaluate --split test
	$(PY) -m fracture cam --evaluate --layers relu --methods gradcam
	$(PY) -m fracture cam --limit 4 --layers relu,pool4_relu,pool3_relu --methods gradcam,layercam

test: $(STAMP) ## unit tests, then the notebooks with pytest --nbval (the browser test skips, saying why, without `make browser`)
	$(PY) -m pytest tests -q
	KERAS_BACKEND=jax $(PY) -m pytest tests -q -m backend
	KERAS_BACKEND=torch $(PY) -m pytest tests -q -m backend
	FRACTURE_NOTEBOOK_PROFILE=smoke $(PY) -m pytest --nbval notebooks -q --nbval-sanitize-with notebooks/sanitize.cfg

# The notebooks use the kernel "python3", which ipykernel in .venv provides on any machine.
notebooks: $(STAMP) ## rebuild the notebooks from tools/build_notebooks.py, execute them (smoke profile), save outputs
	$(PY) tools/build_notebooks.py
	for nb in notebooks/*.ipynb; do \
		FRACTURE_NOTEBOOK_PROFILE=smoke $(VENV)/bin/jupyter execute --inplace --timeout=900 \
			--kernel_name=python3 $$nb || exit 1; done

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

.PHONY: help venv browser data demo test notebooks benchmarks mlflow-ui clean clean-runs
