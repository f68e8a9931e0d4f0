# `make test` is the one command that installs what the tests need and runs them all
# (CI runs it through .ci/run). Run it as root: the end-to-end tests bring up a real
# single-node Ganeti cluster in private network namespaces.

VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test lint bench clean

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -ra

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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis .ruff_cache
