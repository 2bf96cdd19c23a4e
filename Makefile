# The two commands of the README:
#   make demo   runs roadfeed on the embedded default (database, simulated
#               département, collectors, feeds and web page)
#   make test   runs the linters (make lint), then the whole test suite
# Each one does its own set-up: system packages (as root), the virtual
# environment and, for the tests, the TimescaleDB engine's root filesystem.

# A Python that every user can run (the system one when it is recent enough).
PYTHON ?= $(shell for p in /usr/bin/python3 python3.12 python3.11 python3; do \
            command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
            && { command -v $$p; break; }; done)

.PHONY: demo test lint lock lock-upgrade flake-hunt venv-runtime venv-test system-runtime system-test engine-b web clean

demo: system-runtime web venv-runtime
	.venv/bin/roadfeed demo

test: system-test engine-b web venv-test lint
	.venv/bin/python -m pytest

# ruff (lint and format), mypy and the import contracts, all configured in pyproject.toml.
# Each runs, so that one run shows every finding; any finding fails the target.
lint: venv-test
	@failed=0; for tool in "ruff check ." "ruff format --check ." "mypy" "lint-imports"; do \
	  echo ".venv/bin/$$tool"; .venv/bin/$$tool || failed=1; done; exit $$failed

system-runtime:
	@scripts/system-packages runtime

system-test:
	@scripts/system-packages test

# Engine B (PostgreSQL 17 + TimescaleDB) needs root to build; without root the
# tests of that engine skip and say how to build it.
engine-b:
	@if [ "$$(id -u)" = 0 ]; then scripts/engine-b-rootfs; \
	 else echo "not root: the TimescaleDB engine is not built (sudo scripts/engine-b-rootfs)"; fi

# The web page: web/ -> feed/webassets/ (not committed): npm packages from
# package-lock.json, then esbuild.
web:
	@scripts/build-web

# The virtual environment: exactly the versions of the lock (scripts/venv says how).
venv-runtime:
	@PYTHON="$(PYTHON)" scripts/venv runtime

venv-test:
	@PYTHON="$(PYTHON)" scripts/venv test

# The locks, requirements/runtime.txt and requirements/test.txt, with hashes, made by
# uv from pyproject.toml's ranges. `make lock` follows a change of pyproject.toml and
# keeps every other pin; `make lock-upgrade` moves every pin to today's releases.
# Either is a deliberate step: commit the result on its own, once `make test` passes.
UV_VERSION := 0.13.10
UV := .venv-lock/bin/uv
COMPILE = cd requirements && ../$(UV) pip compile ../pyproject.toml build.in --universal \
          --python-version 3.11 --generate-hashes --custom-compile-command "make lock" -q $(UPGRADE)
lock:
	@test -x $(UV) || { $(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install --quiet uv==$(UV_VERSION); }
	$(COMPILE) -o runtime.txt
	$(COMPILE) --extra test --extra bench -c runtime.txt -o test.txt
	@git diff --stat -- requirements/

lock-upgrade:
	@$(MAKE) --no-print-directory lock UPGRADE=--upgrade

# Runs the whole suite N times (default 5), under CPU contention unless QUIET=1,
# and reports every test that ever failed or hung (scripts/flake-hunt).
flake-hunt: system-test engine-b web venv-test
	scripts/flake-hunt $(if $(N),--runs $(N)) $(if $(QUIET),--quiet)

clean:
	rm -rf .venv .venv-lock var node_modules feed/webassets .mypy_cache .ruff_cache .import_linter_cache
