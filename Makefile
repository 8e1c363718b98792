# The two set-up commands of the README: `make demo` and `make test`. Everything else they need is installed here.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint controlplane bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

controlplane: $(BIN)/.installed
	$(BIN)/dra-operator controlplane build

lint: $(BIN)/.installed
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench
	$(BIN)/mypy

test: controlplane lint
	$(BIN)/pytest

demo: controlplane
	$(BIN)/dra-operator demo
