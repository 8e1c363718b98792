"""Our models against the built-in resource.k8s.io/v1 of kube-apiserver: one verdict per rule table case."""

from __future__ import annotations

import copy
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from dra_operator.api.resource import API_VERSION, UPSTREAM_API_VERSION

_CASES_FILE = Path(__file__).resolve().parents[1] / "unit" / "test_api_resource.py"
_spec = importlib.util.spec_from_file_location("_api_rule_cases", _CASES_FILE)
assert _spec is not None and _spec.loader is not None
_cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cases)
CASES: list[tuple[str, dict[str, Any], list[str] | None]] = _cases.CASES

# Where we knowingly differ from kube-apiserver 1.36 (it accepts, we reject), and why.
DIVERGENCES = {
    # The issue asks for count <= 0 to be an error; the apiserver cannot tell an explicit 0 from unset
    # (int64 with omitempty) and defaults it to 1.
    "count 0",
    # types.go declares matchAttribute/distinctAttribute as a oneOf; the 1.36 validation lets both through.
    "constraint with both kinds",
}

Kubectl = Callable[..., CompletedProcess[str]]


@pytest.mark.parametrize(("obj", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_same_verdict_as_the_builtin_api(
    request: pytest.FixtureRequest, kubectl: Kubectl, namespace: str, obj: dict[str, Any], expected: Any
) -> None:
    builtin = copy.deepcopy(obj)
    if builtin["apiVersion"] == API_VERSION:
        builtin["apiVersion"] = UPSTREAM_API_VERSION
    builtin["metadata"].pop("namespace", None)
    result = kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(builtin), check=False
    )  # fmt: skip
    apiserver_accepts = result.returncode == 0
    we_accept = expected is None
    case = request.node.callspec.id
    if case in DIVERGENCES:
        assert apiserver_accepts and not we_accept, f"divergence {case!r} changed: {result.stderr}"
    else:
        assert apiserver_accepts == we_accept, f"apiserver: {result.stderr or 'accepted'}"
