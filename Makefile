# metacot — the two set-up commands of README.md are `make run` and `make test`; both install
# what they need first (idempotent, ~1 minute on a fresh machine).
PY ?= python3
# The CPU build of torch (a bare `torch` would pull a multi-GB CUDA build). GPU users: install
# the torch build for your CUDA first and run `make install TORCH=`.
TORCH ?= torch==2.13.0
PYTEST ?= $(PY) -m pytest

.PHONY: install run test test-slow test-gpu test-all lint bench clean

install:
	@$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH)
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'

run: install
	$(PY) train.py

test: install
	$(PYTEST) -q -m "not slow and not gpu" --timeout=900

test-slow: install
	$(PYTEST) -q -m "slow" --timeout=1800

test-gpu: install
	$(PYTEST) -q -m "gpu"

test-all: install
	$(PYTEST) -q --timeout=1800

lint:
	$(PY) -m ruff check src tests scripts train.py

bench: install
	$(PY) scripts/bench_datagen.py
	$(PY) scripts/bench_generation.py

clean:
	rm -rf logs/* .pytest_cache .ruff_cache
