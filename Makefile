# C3 developer commands. `make up` runs the platform locally; `make test` runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install up test check bench clean

# Exactly the versions in requirements.lock (scripts/lock re-resolves it from pyproject.toml).
$(BIN)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "C3 needs Python 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

install: $(BIN)/.installed

up: install
	$(BIN)/c3 up

test: install
	scripts/system_deps
	$(BIN)/pytest

check: install
	scripts/check

bench: install
	$(BIN)/python benchmarks/proxy_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
