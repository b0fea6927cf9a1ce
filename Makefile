# Two entry points for a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck wheelcheck pytest bench fuzz clean sysdeps

# Python 3.11+ with venv and pip; installs Debian's python3-venv only when venv is missing;
# Debian's systemd when systemd-analyze (which checks the shipped unit) is missing; chromium with
# its driver (the admin status page's browser test) and chattr (its readiness test: root is
# refused writes only by an immutable folder) when they are missing; zsh and fish (the shell
# completion tests) when they are missing.
sysdeps:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "fluxd needs Python 3.11 or newer as $(PYTHON)"; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || \
	  { apt-get update -q && apt-get install -y -q python3-venv; }
	@# systemd-analyze checks the shipped unit (tests/daemon/test_systemd_unit.py).
	@command -v systemd-analyze >/dev/null || \
	  { apt-get update -q && apt-get install -y -q systemd; }
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -q && apt-get install -y -q chromium chromium-driver; }
	@command -v chattr >/dev/null || { apt-get update -q && apt-get install -y -q e2fsprogs; }
	@command -v zsh >/dev/null && command -v fish >/dev/null || \
	  { apt-get update -q && apt-get install -y -q zsh fish; }

$(STAMP): pyproject.toml | sysdeps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m fluxctl.demo

test: lint typecheck wheelcheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The wheel `pip install .` builds, installed alone into a fresh venv: versions, a send and a
# recv over TCP and QUIC (an editable install would hide a module the wheel leaves out).
wheelcheck: $(STAMP)
	$(PY) .ci/wheelcheck.py

pytest: $(STAMP)
	$(PY) -m pytest -n 2 -q

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m benchmarks core
	$(PY) -m benchmarks quic
	$(PY) -m benchmarks links
	$(PY) -m benchmarks concurrency
	$(PY) -m benchmarks ratelimit
	$(PY) -m benchmarks housekeeping
	$(PY) -m benchmarks startup
	$(PY) -m benchmarks tree
	$(PY) -m benchmarks cluster
	$(PY) -m benchmarks http
	$(PY) -m benchmarks admin

# Every fuzz property with 10000 inputs each (make test runs 800); the count goes to RESULTS.md.
fuzz: $(STAMP)
	$(PY) -m benchmarks.fuzz

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
