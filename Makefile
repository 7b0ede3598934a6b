# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv when missing (torch 2.14.1 / torchvision 0.29.1 are pinned in pyproject.toml).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.foveal-installed

.PHONY: demo test lint bench bench-fashion clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/foveal demo --out foveal-demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/efficientnet_speed.py

bench-fashion: $(STAMP)
	$(PY) bench/fashion_mnist.py

clean:
	rm -rf foveal-demo runs .pytest_cache .mypy_cache .ruff_cache
