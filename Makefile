# Developer entry points. Needs only python3 (3.11+) and make; everything else lands in .venv.
#
#   make run    set up .venv if needed, then start web + worker + beat (visitor-enrich serve)
#   make test   set up .venv if needed, then ruff, mypy and pytest (PYTEST_ARGS="-k foo -x")

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=
SERVE_ARGS ?=

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.DEFAULT_GOAL := help
.PHONY: help venv run test lint format bench clean distclean FORCE

help:
	@echo "make run        start web + worker + beat (creates $(VENV) on first use)"
	@echo "make test       ruff + mypy + pytest; pass PYTEST_ARGS='...' to pytest"
	@echo "make lint       ruff + mypy only"
	@echo "make format     ruff format + ruff check --fix"
	@echo "make bench      $(BIN)/python -m bench $$BENCH_ARGS"
	@echo "make venv       create $(VENV) / reinstall when pyproject.toml changed"
	@echo "make clean      remove caches and build output (distclean also removes $(VENV))"

venv: $(STAMP)

# (Re)install when pyproject.toml is newer than the stamp, or when the venv has no working
# interpreter (missing, or built by a Python that is gone): then it is created afresh.
$(STAMP): pyproject.toml $(if $(shell test -x $(BIN)/python && $(BIN)/python -c '' 2>/dev/null && echo ok),,FORCE)
	@if ! { test -x $(BIN)/python && $(BIN)/python -c '' 2>/dev/null; }; then \
		$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
			{ echo "error: $(PYTHON) must be Python 3.11 or newer (make PYTHON=python3.12 ...)" >&2; exit 1; }; \
		echo "creating $(VENV) with $$($(PYTHON) --version)"; \
		$(PYTHON) -m venv --clear $(VENV) || \
			{ echo "error: '$(PYTHON) -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }; \
	fi
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $@

run: venv
	$(BIN)/visitor-enrich serve $(SERVE_ARGS)

lint: venv
	$(BIN)/ruff check worker config tests bench
	$(BIN)/mypy

test: venv lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

format: venv
	$(BIN)/ruff format worker config tests bench
	$(BIN)/ruff check --fix worker config tests bench

bench: venv
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info

distclean: clean
	rm -rf $(VENV)

FORCE:
