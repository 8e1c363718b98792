"""Helpers the integration tests share: free ports, the operator subprocess and its metrics, GETs, CRDs."""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import yaml

from dra_operator.api import crdgen
from dra_operator.controlplane import ApiError, ControlPlane

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "tests" / "fixtures" / "seed"
Json = dict[str, Any]
Kubectl = Callable[..., CompletedProcess[str]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed(name: str) -> Json:
    """A manifest from tests/fixtures/seed, as written there."""
    obj: Json = yaml.safe_load((SEED / name).read_text())
    return obj


def operator_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for `python -m dra_operator.cli ...`: this checkout's sources, unbuffered output."""
    env = {**os.environ, **(extra or {}), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = str(REPO / "operator") + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


def scrape_metrics(port: int) -> dict[str, float]:
    """The Prometheus samples served on 127.0.0.1:`port`/metrics ({} while nothing answers)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def get_or_none(cp: ControlPlane, path: str) -> Json | None:
    """GET `path` as the admin; None when it does not exist (404), any other error raised."""
    try:
        found: Json = cp.request("GET", path)
    except ApiError as error:
        if error.status == 404:
            return None
        raise
    return found


def install_crds(kubectl: Kubectl) -> None:
    """Apply crds/ (server-side, idempotent) and wait until every CRD is Established."""
    applied = kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"), check=False)
    assert applied.returncode == 0, f"the apiserver refused crds/: {applied.stderr}"
    for crd in crdgen.generate().values():
        kubectl("wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}", "--timeout=60s")
