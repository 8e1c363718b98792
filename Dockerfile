# The dra-operator image: one entry point for the operator (`dra-operator run`) and the node agent
# (`dra-operator agent`). Build: docker build -t dra-operator:dev .   (skaffold.yaml does this for you)
# Without registry access: python -m dra_operator.tools.image (a Debian base of its own as PYTHON_IMAGE).
#
# No `# syntax=` line: it would make BuildKit fetch a frontend image, which an offline build cannot, and the
# frontend built into BuildKit (Docker 20.10 and later) already understands RUN --mount.
#
# The base is pinned to an exact Python patch release on an exact Debian release, so a rebuild gets the same
# interpreter; pin its digest too in your registry mirror (`FROM ...@sha256:...`) for byte-for-byte rebuilds.
ARG PYTHON_IMAGE=python:3.11.15-slim-trixie

# ---- builder: turns the checkout into wheels (ours and every runtime dependency), nothing else -----------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel is built from: tests, charts and benchmarks never enter the image.
COPY pyproject.toml README.md ./
COPY operator/ operator/
# Runtime dependencies only: the [test] extra is not requested.
RUN pip wheel --wheel-dir /wheels .

# ---- runtime: the interpreter, the installed wheels, an unprivileged user ---------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="dra-operator" \
      org.opencontainers.image.description="Kubernetes Dynamic Resource Allocation for any cluster, as a Kopf operator" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted from the builder, so they never become a layer of the image; the installer
# itself (pip, setuptools, wheel) is removed afterwards: nothing at run time needs it.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/dra_operator-*.whl \
    && pip uninstall --yes pip setuptools wheel \
    && groupadd --system --gid 65532 dra-operator \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin dra-operator
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["dra-operator"]
CMD ["--help"]
