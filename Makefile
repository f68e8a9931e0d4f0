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

$(VENV)/.installed: setup.py
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis .ruff_cache
