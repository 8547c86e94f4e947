# textok — `make test` and `make demo` work on a fresh machine: they create/reuse .venv,
# install torch (torch==2.13.0 only when no torch is importable), then the package.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.textok-installed
DEMO_DIR ?= demo_out
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test demo bench gpu-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Re-install only when pyproject.toml changes (idempotent and quick otherwise).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev,demo]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh $(DEMO_DIR)

# Every bench has CPU-sized defaults (a few minutes in all); gpu_check.py is its own target and
# bench/_*.py are helpers, not benches.
bench: $(STAMP)
	for b in $(filter-out bench/gpu_check.py bench/_%,$(wildcard bench/*.py)); do $(PY) $$b || exit 1; done

# One call on a lent GPU (<= 8 min): JSON to stdout and bench/results/gpu_check.json.
# Without CUDA it prints why and exits 0.
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py --out bench/results/gpu_check.json

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
