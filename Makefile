# The two commands of the README:
#   make demo   runs roadfeed on the embedded default (database, simulated
#               département, collectors, feeds and web page)
#   make test   runs the whole test suite
# Each one does its own set-up: system packages (as root), the virtual
# environment and, for the tests, the TimescaleDB engine's root filesystem.

# A Python that every user can run (the system one when it is recent enough).
PYTHON ?= $(shell for p in /usr/bin/python3 python3.12 python3.11 python3; do \
            command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
            && { command -v $$p; break; }; done)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test system-runtime system-test engine-b web clean

demo: system-runtime web $(STAMP)
	$(VENV)/bin/roadfeed demo

test: system-test engine-b web $(STAMP)
	$(VENV)/bin/python -m pytest

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

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is needed (apt-get install python3 python3-venv)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) var node_modules feed/webassets
