# textok — `make test` and `make demo` work on a fresh machine: they create/reuse .venv,
# install torch (torch==2.13.0 only when no torch is importable), then the package, every
# dependency pinned by requirements/constraints.txt (the versions the suite passed with).
# `make upgrade-deps` re-resolves that file and runs the suite: upgrading is a deliberate step.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.textok-installed
LOCK   := requirements/constraints.txt
DEMO_DIR ?= demo_out
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test demo bench gpu-check clean upgrade-deps

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Re-install only when pyproject.toml or the lock changes (idempotent and quick otherwise).
$(STAMP): pyproject.toml $(LOCK) | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -c $(LOCK) -e ".[dev,demo]"
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

# Re-resolve every dependency to its newest release inside pyproject's bounds, install that, and
# run the suite: commit requirements/constraints.txt only when it passes.
upgrade-deps: | $(PY)
	$(PY) -m pip install -q "pip-tools>=7.4"
	$(PY) -m piptools compile -q --upgrade --all-extras --strip-extras --no-emit-index-url \
		--no-emit-find-links --no-header --annotation-style=line -o $(LOCK) pyproject.toml requirements/torch.in
	sed -i 's/^torch==\([0-9.]*\)+cpu /torch==\1     /' $(LOCK)
	$(PY) -m pip install -q -c $(LOCK) -e ".[dev,demo]"
	touch $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
