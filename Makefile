# `make demo` installs what it needs and plays the demo (demo/run.py); `make demo-down` takes it
# away. `make test` is the one command that installs what the tests need and runs them all, the
# demo first (CI runs it through .ci/run). Run them as root: both bring up a real single-node
# Ganeti cluster in private network namespaces.

VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test lint bench clean packages package-tools deb demo demo-down

test: $(VENV)/.installed package-tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python demo/run.py --teardown
	$(BIN)/pytest -ra
	$(BIN)/pytest -ra -m package tests/deb

demo: $(VENV)/.installed
	$(BIN)/python demo/run.py

demo-down: $(VENV)/.installed
	$(BIN)/python demo/run.py down


lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.installed
	PYTHON=$(abspath $(BIN))/python sh bench/run_all.sh

# Debian's packages the tests and the demo run: a real PostgreSQL 15 server (and libpq, which
# psycopg2 builds against), and Ganeti with what its sandbox uses (tests/harness/ganeti-sandbox.sh).
PACKAGES := postgresql-15 libpq-dev ganeti socat iproute2 util-linux
APT_LOG := /var/log/snf-watcher-make-apt.log

packages:
	@missing=$$(for p in $(PACKAGES); do \
		dpkg-query -W -f='$${db:Status-Abbrev}' $$p 2>/dev/null | grep -q '^ii' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian's" $$missing "(apt-get; its output: $(APT_LOG))"; \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
			$$missing; } >$(APT_LOG) 2>&1 || { tail -n 30 $(APT_LOG); exit 1; }; \
	fi

$(VENV)/.installed: setup.py | packages
	@echo "making $(VENV) with the project and its test tools (pip)"
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# Building and checking the Debian package (tests/deb): debian/control's Build-Depends,
# lintian, and systemd-analyze for the unit.
PACKAGE_TOOLS := build-essential debhelper dh-python pybuild-plugin-pyproject python3-all \
	python3-setuptools python3-psycopg2 python3-pyinotify python3-requests python3-yaml lintian systemd

package-tools:
	@if dpkg-query -W -f='$${db:Status-Abbrev}\n' $(PACKAGE_TOOLS) 2>/dev/null | grep -qv '^ii' \
		|| ! dpkg-query -W $(PACKAGE_TOOLS) >/dev/null 2>&1; then \
		echo "installing Debian's package build tools (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$(PACKAGE_TOOLS); \
	fi

deb: package-tools
	PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis .ruff_cache
