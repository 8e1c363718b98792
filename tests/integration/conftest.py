"""Fixtures for tests against the real control plane: one per session, plus Nodes, namespaces and waiting.

Every test under tests/integration is marked `controlplane` automatically. If the binaries cannot be built or
the control plane cannot start, every test that uses it FAILS with the reason (never skips).

Fixtures: control_plane (session; a dra_operator.controlplane.ControlPlane), plane (module; one per release
of the version matrix, see `_versions`), kubeconfig (str path), kubectl
(callable: kubectl(*args, input=None, check=True) -> CompletedProcess), make_node(name, labels=None,
capacity=None) -> Node dict (deleted after the test), wait_for(predicate, timeout=30, message="") -> the
predicate's first truthy value, namespace (a fresh namespace name, deleted after the test), real_cluster
(session; a second ControlPlane with two dra_operator.realnodes.RealNodes, for tests that run containers).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any, Protocol, TypeVar

import pytest

from dra_operator.controlplane import (
    ApiError,
    ControlPlane,
    ControlPlaneError,
    build,
    node_manifest,
    polling,
)
from dra_operator.realnodes import RealNodes, RealNodesError, RealNodesUnavailable

T = TypeVar("T")
_HERE = Path(__file__).resolve().parent


def _versions() -> list[str]:
    """The releases the `plane` fixture runs: DRA_OPERATOR_VERSIONS=1.30,1.37 limits them (default: all of
    build.RELEASES, the version matrix)."""
    wanted = os.environ.get("DRA_OPERATOR_VERSIONS", "")
    if not wanted.strip():
        return list(build.RELEASES)
    return [build.release(v.strip()).kubernetes for v in wanted.split(",") if v.strip()]


VERSIONS = _versions()
# Releases of the version matrix whose binaries could not be built at collection: version -> why.
RELEASES_UNAVAILABLE = pytest.StashKey[dict[str, str]]()


class _Startup:
    """Remembers a failed start so later tests fail at once with the same reason instead of retrying."""

    error: str | None = None
    matrix_errors: dict[str, str] = {}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselection, so `-m "not controlplane"` sees the marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.controlplane)
        if "real_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.realnodes)  # `pytest -m realnodes` runs them alone


def pytest_collection_finish(session: pytest.Session) -> None:
    # Build (or find cached) binaries before the first test, outside any per-test timeout: a cold build takes
    # far longer than pytest-timeout allows one test. A failure is reported by the control_plane fixture.
    if not any(item.get_closest_marker("controlplane") for item in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    try:
        result = build.ensure_binaries(progress=False)
    except (build.BuildError, OSError) as error:
        _Startup.error = f"control plane binaries unavailable: {error}"
        return
    if reporter is not None:
        how = "cached" if result.cached else f"built in {result.seconds:.0f}s"
        reporter.write_line(f"control plane binaries: {result.bin_dir} ({how})")
    # The version matrix (test_versions): each other release the collected tests run on, built the same way.
    releases = {
        item.callspec.params["plane"]
        for item in session.items
        if "plane" in getattr(getattr(item, "callspec", None), "params", {})
    }
    unavailable = session.config.stash.setdefault(RELEASES_UNAVAILABLE, {})
    for version in sorted(releases - {build.K8S_VERSION}):
        try:
            result = build.ensure_binaries(progress=False, version=version)
        except (build.BuildError, OSError) as error:
            unavailable[version] = f"Kubernetes {version} binaries unavailable: {error}"
            continue
        if reporter is not None:
            how = "cached" if result.cached else f"built in {result.seconds:.0f}s"
            reporter.write_line(f"Kubernetes {version} binaries: {result.bin_dir} ({how})")


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    if _Startup.error is not None:
        pytest.fail(_Startup.error, pytrace=False)
    # One control plane serves every module, and each leaves namespaces for the namespace controller to empty.
    # Under Kubernetes' default client limits (controller manager 20 qps) that clean-up can hold back the
    # controllers a later test waits on: one CI run saw the resourceclaim controller take over 60 s to record
    # a Pod's generated claims. Tests compare outcomes, not throughput (the benchmarks keep the defaults).
    plane = ControlPlane(client_qps=100)
    try:
        plane.start()
    except (build.BuildError, ControlPlaneError, OSError) as error:
        _Startup.error = f"control plane unavailable: {error}"
    if _Startup.error is not None:
        pytest.fail(_Startup.error, pytrace=False)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="module", params=VERSIONS)
def plane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """A control plane of each release of the version matrix, per module (the default release: the
    session's `control_plane`). Tests that take it run once per release, grouped by release."""
    version: str = request.param
    if version == build.K8S_VERSION:
        yield request.getfixturevalue("control_plane")
        return
    unavailable = request.config.stash.get(RELEASES_UNAVAILABLE, {})
    if version in unavailable:
        pytest.fail(unavailable[version], pytrace=False)
    cp = ControlPlane(version=version, client_qps=100)
    try:
        cp.start()
    except (build.BuildError, ControlPlaneError, OSError) as error:
        pytest.fail(f"Kubernetes {version} control plane unavailable: {error}", pytrace=False)
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def kubeconfig(control_plane: ControlPlane) -> str:
    return str(control_plane.kubeconfig)


class Kubectl(Protocol):
    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> CompletedProcess[str]: ...


@pytest.fixture
def kubectl(control_plane: ControlPlane) -> Kubectl:
    def run(*args: str, input: str | None = None, check: bool = True) -> CompletedProcess[str]:
        return control_plane.kubectl(*args, input=input, check=check)

    return run


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, message: str = "") -> T:
    """dra_operator.controlplane.wait_until, failing the test (not erroring it) when the time is up."""
    try:
        return polling.wait_until(predicate, timeout, message)
    except TimeoutError as error:
        reason = str(error)
    pytest.fail(reason, pytrace=False)


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    return wait_until


@pytest.fixture
def make_node(control_plane: ControlPlane) -> Iterator[Callable[..., dict[str, Any]]]:
    created: list[str] = []

    def make(
        name: str, labels: Mapping[str, str] | None = None, capacity: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        node: dict[str, Any] = control_plane.request(
            "POST", "/api/v1/nodes", node_manifest(name, labels, capacity)
        )
        created.append(name)
        return node

    yield make
    for name in created:
        try:
            control_plane.request("DELETE", f"/api/v1/nodes/{name}")
        except ApiError as error:
            if error.status != 404:
                raise


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    # Namespace names are DNS labels: lower-case, at most 63 characters.
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].rstrip("-")
    name = f"{base or 'test'}-{uuid.uuid4().hex[:6]}"
    control_plane.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    # Deletion finishes in the background (the namespace controller empties it); tests never reuse a name.
    try:
        control_plane.request("DELETE", f"/api/v1/namespaces/{name}")
    except ApiError as error:
        if error.status != 404:
            raise


# ------------------------------------------------------------------------------------------------ real nodes


class _RealStartup:
    error: str | None = None


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[tuple[ControlPlane, RealNodes]]:
    """A control plane of its own with two real nodes (kubelet + containerd), for tests that run containers.

    Separate from `control_plane`: fake-node tests create Nodes and Pods that real kubelets must not meet.
    Fails (never skips) when real nodes cannot run here: CI runs as root on cgroup v1, where they can.
    """
    if _RealStartup.error is not None:
        pytest.fail(_RealStartup.error, pytrace=False)
    plane = ControlPlane()
    nodes = RealNodes(plane, count=2)
    try:
        plane.start()
        nodes.start()
    except (build.BuildError, ControlPlaneError, RealNodesError, RealNodesUnavailable, OSError) as error:
        _RealStartup.error = f"real nodes unavailable: {error}"
        nodes.stop()
        plane.stop()
        pytest.fail(_RealStartup.error, pytrace=False)
    try:
        yield plane, nodes
    finally:
        nodes.stop()
        plane.stop()
