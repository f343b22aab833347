# `make run` and `make test` each build .venv from nothing when it is missing.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# torch first, pinned: its CPU wheel lies in /opt/wheels here; unpinned it pulls a CUDA build.
WHEELS := $(wildcard /opt/wheels)
PIP    := $(BIN)/pip install --disable-pip-version-check -q $(if $(WHEELS),--find-links $(WHEELS))

.PHONY: run test lint bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[local,downstream,s3,dask,iceberg,test,lint]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/python scripts/quickstart.py

test: $(BIN)/.installed
	$(BIN)/python -m pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check pipeline flows
	$(BIN)/ruff format --check pipeline flows
	$(BIN)/mypy

bench: $(BIN)/.installed
	$(PIP) -e '.[local,downstream,s3,dask,iceberg,test,lint,bench]'
	$(BIN)/python -m benchmarks.ratelimits
	$(BIN)/python -m benchmarks.throughput
	$(BIN)/python -m benchmarks.local

clean:
	rm -rf $(VENV) out .embedpipe data
