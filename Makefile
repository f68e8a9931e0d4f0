# `make test` is the one command that installs what the tests need and runs them all
# (CI runs it through .ci/run). Run it as root: the end-to-end tests bring up a real
# single-node Ganeti cluster in private network namespaces.

VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test lint bench clean package-tools deb

test: $(VENV)/.installed package-tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -ra
	$(BIN)/pytest -ra -m package tests/deb


lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.installed
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python bench/run_all.py

# The database tests run a real PostgreSQL 15 server, and psycopg2 builds against libpq.
PG_BIN := /usr/lib/postgresql/15/bin

$(VENV)/.installed: setup.py
	@if ! command -v pg_config >/dev/null || ! test -x $(PG_BIN)/initdb; then \
		echo "installing postgresql-15 and libpq-dev (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 libpq-dev; \
	fi
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
