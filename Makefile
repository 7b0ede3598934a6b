# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv when missing (torch 2.14.1 / torchvision 0.29.1 are pinned in pyproject.toml).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.foveal-installed

.PHONY: demo test test-other-isa lint bench bench-fashion clean

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

# Test files are shared out to one process per core (at most 4), each with its share of the cores' threads
# (tests/conftest.py), so the suite takes about half the time on 2 cores; `$(PY) -m pytest` alone runs it in one.
test: lint
	$(PY) -m pytest -n auto --maxprocesses 4 --dist worksteal

# The numerically sensitive tests once more with the kernels of an older CPU (oneDNN and ATen limited to AVX2), so a
# test that depends on one kernel's rounding or on the order of tied scores fails on every machine (the end-to-end
# runs marked slow, demo stages and multi-process trainings, ran in make test already).
SENSITIVE_TESTS := tests/tasks tests/inference tests/explain tests/models
# On a CPU whose kernels already run at AVX2 (e.g. AMD EPYC Zen 3) `make test` was that run: it is not repeated.
test-other-isa: $(STAMP)
	@if [ "$$($(PY) -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')" = "AVX2" ]; then \
		echo "test-other-isa: this CPU runs AVX2 kernels already, so make test was the AVX2 run"; \
	else \
		ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest -n auto --maxprocesses 4 --dist worksteal \
			-m "not slow" $(SENSITIVE_TESTS); \
	fi

bench: $(STAMP)
	$(PY) bench/efficientnet_speed.py

bench-fashion: $(STAMP)
	$(PY) bench/fashion_mnist.py

clean:
	rm -rf foveal-demo runs .pytest_cache .mypy_cache .ruff_cache
