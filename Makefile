# `make test` and `make demo` each set themselves up on a fresh machine.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# A second interpreter for the install check on Python 3.12 (make test-py312); torch comes from the registry there
# (its default build; the CPU file on disk is for 3.11 only)
PYTHON312 ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12; do $$p -c 'import sys' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV312   ?= .venv312
UNIT      := tests/test_config.py tests/test_precision.py tests/models tests/store tests/eval tests/data

.PHONY: install demo test test-slow test-all test-py312 bench clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "need python3.11 on PATH (or: make PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so nothing pulls a CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro

test: install
	$(PY) -m pytest -q

# the slow tier: kill-and-resume with real signals, the shared-remote round trip and a second full repro
test-slow: install
	$(PY) -m pytest -q -m 'slow and not gpu and not bench'

test-all: install
	$(PY) -m pytest -q -m ''

# Python 3.12: the package installs with its declared ranges (no torch pin) and the unit tier passes
test-py312:
	@test -n "$(PYTHON312)" || { echo "need python3.12 on PATH (or: make test-py312 PYTHON312=/path/to/python3.12)"; exit 1; }
	test -x $(VENV312)/bin/python || $(PYTHON312) -m venv $(VENV312)
	$(VENV312)/bin/python -m pip install --quiet --upgrade pip
	$(VENV312)/bin/python -m pip install --quiet -e '.[test]'
	$(VENV312)/bin/python -c "import sys, torch, zarr, numcodecs; print('python', sys.version.split()[0], 'torch', torch.__version__, 'zarr', zarr.__version__, 'numcodecs', numcodecs.__version__)"
	$(VENV312)/bin/python -m pytest -q $(UNIT)

# every benchmark, one after the other (never two at once: they time this machine), each writing
# metrics/bench_<stage>.json with its environment, command, ratios and meets_target. Hours on 2 cores: the
# rerun benchmark alone runs the demo twice.
BENCH ?= extract crop decode featurize memory_media rerun memory stage1_speed tune
bench: install
	@for b in $(BENCH); do \
	  echo "== benchmarks.$$b"; \
	  PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m benchmarks.$$b || exit 1; \
	done
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m benchmarks.tune_validation --tiny
	@if $(PY) -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then \
	  $(PY) -m benchmarks.paper_sizes; else echo "benchmarks.paper_sizes: no GPU here, skipped"; fi

clean:
	rm -rf $(VENV) $(VENV312) .pytest_cache
