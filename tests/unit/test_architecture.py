"""The core rule, checked by parsing: api/, cel/ and allocation/ do no I/O and import no shell module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "dra_operator"
CORE = ("api", "cel", "allocation")
# Third-party or standard modules that mean network, processes or the Kubernetes client.
FORBIDDEN_MODULES = ("kopf", "kubernetes_asyncio", "aiohttp", "subprocess", "socket")
FORBIDDEN_CALLS = ("open", "print")
MODULES = sorted(path for package in CORE for path in (PACKAGE / package).rglob("*.py"))


def _imported(tree: ast.Module, path: Path) -> list[str]:
    """Absolute names of every module `path` imports (relative imports resolved against its package)."""
    package = ["dra_operator", *path.parent.relative_to(PACKAGE).parts]
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.append(module)
            # `from dra_operator import kube` names a module too.
            names += [f"{module}.{alias.name}" for alias in node.names if module == "dra_operator"]
    return names


def _violations(tree: ast.Module, path: Path) -> list[str]:
    found = []
    for name in _imported(tree, path):
        parts = name.split(".")
        if parts[0] in FORBIDDEN_MODULES:
            found.append(f"imports {name}")
        elif parts[0] == "dra_operator" and len(parts) > 1 and parts[1] not in CORE:
            found.append(f"imports {'.'.join(parts[:2])} (outside {', '.join(CORE)})")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            found.append(f"calls {node.func.id}() at line {node.lineno}")
    return found


def test_core_modules_are_found() -> None:
    assert {path.parent.name for path in MODULES} >= set(CORE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_module_does_no_io_and_imports_no_shell(path: Path) -> None:
    assert _violations(ast.parse(path.read_text(), filename=str(path)), path) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import subprocess", ["imports subprocess"]),
        ("from kopf import on", ["imports kopf"]),
        ("import kubernetes_asyncio.client", ["imports kubernetes_asyncio.client"]),
        ("from .. import kube", ["imports dra_operator.kube (outside api, cel, allocation)"]),
        (
            "from dra_operator.kube import client",
            ["imports dra_operator.kube (outside api, cel, allocation)"],
        ),
        (
            "from dra_operator import operator",
            ["imports dra_operator.operator (outside api, cel, allocation)"],
        ),
        ("from ..operator import state", ["imports dra_operator.operator (outside api, cel, allocation)"]),
        ("from ..cel import compile_selector\nfrom .nodes import x", []),
        ("print('x')", ["calls print() at line 1"]),
        ("with open('f') as f: pass", ["calls open() at line 1"]),
        ("import json\nfrom dra_operator.api.resource import Device", []),
    ],
)
def test_the_check_catches_what_it_should(source: str, expected: list[str]) -> None:
    # Placed as a module of allocation/, so relative imports resolve as they would there.
    assert _violations(ast.parse(source), PACKAGE / "allocation" / "stand_in.py") == expected
