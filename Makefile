# Two commands do everything on a fresh clone: `make demo` and `make test`.
# Each creates .venv on first use and re-installs only when pyproject.toml or
# constraints.txt changed since the last install.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PYTHONDONTWRITEBYTECODE := 1
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test test-fast docs docs-serve bench bench-quick lint gpu-suite clean

demo: $(STAMP)
	$(BIN)/casebook tour

test: $(STAMP)
	$(BIN)/ruff check common systems tests
	$(BIN)/python -m pytest
	$(BIN)/python -m mkdocs build --strict --site-dir .site  # not --quiet: it hides warnings from --strict

test-fast: $(STAMP)
	$(BIN)/python -m pytest -x -m "not slow"

docs: $(STAMP)
	$(BIN)/python -m mkdocs build --strict --site-dir .site

docs-serve: $(STAMP)
	$(BIN)/python -m mkdocs serve

# Benchmarks write their JSON, tables and plots where the docs include them.
bench: $(STAMP)
	$(BIN)/casebook bench all --out docs/results

bench-quick: $(STAMP)
	$(BIN)/casebook bench all --quick

lint: $(STAMP)
	$(BIN)/ruff check common systems tests

gpu-suite:
	scripts/gpu-suite.sh

# torch first, on its own: on a Linux box without an NVIDIA driver we take the CPU
# build (from a local wheel if pip already finds one, else PyTorch's CPU index) instead
# of PyPI's multi-GB CUDA build. Everything else comes from PyPI within constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then \
	  echo "torch 2.13.0 already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1 || \
	     $(BIN)/python -m pip install -q --dry-run --no-deps --no-index torch==2.13.0 >/dev/null 2>&1; then \
	  $(BIN)/python -m pip install -q --no-deps torch==2.13.0; \
	else \
	  $(BIN)/python -m pip install -q --no-deps --index-url https://download.pytorch.org/whl/cpu torch==2.13.0; \
	fi
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

clean:
	rm -rf .site out .pytest_cache
