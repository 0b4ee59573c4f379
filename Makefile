# Developer entry points. Needs only python3 (3.11+) and make; everything else lands in .venv.
#
#   make run    set up .venv if needed; on the first run write .env (sandbox mode, a fresh
#               WEBHOOK_SECRET); then start web + worker + beat (visitor-enrich serve)
#   make test   set up .venv and headless Chromium if needed, then ruff, mypy and pytest
#               (PYTEST_ARGS="-k foo -x")

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=
SERVE_ARGS ?=

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.DEFAULT_GOAL := help
.PHONY: help venv run test lint browser format bench clean distclean FORCE

help:
	@echo "make run        start web + worker + beat (creates $(VENV) on first use)"
	@echo "make test       ruff + mypy + pytest (installs chromium when missing); PYTEST_ARGS='...'"
	@echo "make lint       ruff + mypy only"
	@echo "make format     ruff format + ruff check --fix"
	@echo "make bench      $(BIN)/python -m bench $$BENCH_ARGS"
	@echo "make venv       create $(VENV) / reinstall when pyproject.toml or constraints.txt changed"
	@echo "make clean      remove caches and build output (distclean also removes $(VENV))"

venv: $(STAMP)

# (Re)install, with constraints.txt's tested versions, when pyproject.toml or constraints.txt
# is newer than the stamp, or when the venv has no working interpreter (missing, or built by a
# Python that is gone): then it is created afresh.
$(STAMP): pyproject.toml constraints.txt $(if $(shell test -x $(BIN)/python && $(BIN)/python -c '' 2>/dev/null && echo ok),,FORCE)
	@if ! { test -x $(BIN)/python && $(BIN)/python -c '' 2>/dev/null; }; then \
		$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
			{ echo "error: $(PYTHON) must be Python 3.11 or newer (make PYTHON=python3.12 ...)" >&2; exit 1; }; \
		echo "creating $(VENV) with $$($(PYTHON) --version)"; \
		$(PYTHON) -m venv --clear $(VENV) || \
			{ echo "error: '$(PYTHON) -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2; exit 1; }; \
	fi
	$(BIN)/python -m pip install -c constraints.txt -e '.[dev]'
	@touch $@

run: venv .env
	$(BIN)/visitor-enrich serve $(SERVE_ARGS)

# First run only: .env from .env.example with a fresh WEBHOOK_SECRET and sandbox mode on.
.env: | $(STAMP)
	$(BIN)/visitor-enrich init

lint: venv
	$(BIN)/ruff check worker config tests bench
	$(BIN)/mypy

test: venv lint browser
	$(BIN)/pytest -q $(PYTEST_ARGS)

# The console's tests drive Debian's headless Chromium through Playwright (Playwright's own
# browser download is not used). Installed here when missing and run as root, else named.
CHROMIUM := $(shell command -v chromium || command -v chromium-browser)
browser:
	@if [ -z "$(CHROMIUM)" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing chromium (Debian package) for the console's browser tests"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
		else \
			echo "error: the console's browser tests need headless Chromium: install the" \
				"'chromium' package (sudo apt-get install chromium), then run make test again" >&2; \
			exit 1; \
		fi; \
	fi

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
