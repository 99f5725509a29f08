# llama-tui: `make run` sets everything up and opens the TUI on the demo fleet; `make test` runs the suite,
# `make test-unit` its fast tier.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup run test test-unit screenshot clean-venv

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: llama-tui needs Python 3.11+ (fix: run make with PYTHON=python3.11 or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# Idempotent: the venv is reused while pyproject.toml is unchanged; llama-server is built once into
# the user cache dir (CMAKE_ARGS passes through, e.g. CMAKE_ARGS=-DGGML_CUDA=ON); nginx comes from
# NGINX_BIN, PATH, or apt-get when running as root.
setup: $(STAMP)
	$(BIN)/llama-tui setup

run: setup
	$(BIN)/llama-tui --preset demo

# Everything: tests/unit, tests/integration (real llama-server + nginx), tests/faults, tests/ui.
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fast tier: tests/unit without the tests in it that carry a process marker or need the real
# binaries (`binaries`: nginx -t, llama-server --help), so it needs no `llama-tui setup`.
UNIT_MARKERS := not integration and not faults and not slow and not realmodel and not binaries
test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -m "$(UNIT_MARKERS)" $(PYTEST_ARGS)

# The README's screenshot: the TUI on a real demo fleet with a benchmark ramp running.
screenshot: setup
	$(BIN)/python -m tests.support.screenshot docs/screenshot.svg

clean-venv:
	rm -rf $(VENV)
