"""What the validating webhook checks on our DRA kinds that the CRD schema cannot: every CEL selector compiled
with our CEL environment (of DeviceClasses, claims, templates and DeviceTaintRules), and a
ResourceClaimTemplate's `spec.metadata` label and annotation keys.

Pure functions (no Kopf, no client): `problems(kind, obj, old)` returns (field path, message) pairs in the
apiserver's words, so a refusal reads as the built-in resource.k8s.io/v1 one does. ResourceSlices carry no
CEL and everything Kubernetes checks on them is in the CRD, so they are not checked here.

On UPDATE only expressions that the old object did not already hold are compiled, as Kubernetes does (it
compiles stored expressions in a more lenient environment): an object stored before this check existed stays
updatable, e.g. for finalizers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from dra_operator.api.meta import annotation_problems, label_problems
from dra_operator.cel import CelCompileError, compile_selector

__all__ = ["KINDS", "problems", "selectors"]

#: The kinds checked here -> their plural (in resource.dra-operator.io/v1).
KINDS: dict[str, str] = {
    "DeviceClass": "deviceclasses",
    "ResourceClaim": "resourceclaims",
    "ResourceClaimTemplate": "resourceclaimtemplates",
    "DeviceTaintRule": "devicetaintrules",
}

Problem = tuple[str, str]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _selector_list(selectors: Any, path: str) -> Iterator[tuple[str, Any]]:
    for index, selector in enumerate(_list(selectors)):
        cel = _dict(_dict(selector).get("cel"))
        if "expression" in cel:
            yield f"{path}[{index}].cel.expression", cel["expression"]


def _claim_spec_selectors(spec: Any, path: str) -> Iterator[tuple[str, Any]]:
    for index, request in enumerate(_list(_dict(_dict(spec).get("devices")).get("requests"))):
        base = f"{path}.devices.requests[{index}]"
        exactly = _dict(_dict(request).get("exactly"))
        yield from _selector_list(exactly.get("selectors"), f"{base}.exactly.selectors")
        for sub_index, sub in enumerate(_list(_dict(request).get("firstAvailable"))):
            yield from _selector_list(
                _dict(sub).get("selectors"), f"{base}.firstAvailable[{sub_index}].selectors"
            )


def selectors(kind: str, obj: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(field path, expression) of every CEL selector of a DeviceClass, ResourceClaim, template or
    DeviceTaintRule."""
    spec = _dict(obj.get("spec"))
    if kind == "DeviceClass":
        return list(_selector_list(spec.get("selectors"), "spec.selectors"))
    if kind == "DeviceTaintRule":
        selector = _dict(spec.get("deviceSelector"))
        return list(_selector_list(selector.get("selectors"), "spec.deviceSelector.selectors"))
    if kind == "ResourceClaim":
        return list(_claim_spec_selectors(spec, "spec"))
    if kind == "ResourceClaimTemplate":
        return list(_claim_spec_selectors(spec.get("spec"), "spec.spec"))
    return []


def compile_problem(expression: Any) -> str | None:
    """Why `expression` is refused, worded like the apiserver's CEL validation; None when it compiles."""
    try:
        compile_selector(expression)
    except CelCompileError as err:
        shown = json.dumps(expression if isinstance(expression, str) else str(expression))
        if err.reason.startswith("must evaluate to bool"):
            return f"Invalid value: {shown}: {err.reason}"
        detail = f"ERROR: <input>:{err.line}:{err.column}: {err.reason}" if err.line else err.reason
        if err.line is not None and err.column is not None:
            lines = str(expression).splitlines() or [""]
            if 1 <= err.line <= len(lines):
                detail += f"\n | {lines[err.line - 1]}\n | {'.' * (err.column - 1)}^"
        return f"Invalid value: {shown}: compilation failed: {detail}"
    return None


def problems(kind: str, obj: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> list[Problem]:
    """Every problem of `obj` (the new object) that the apiserver reports for the built-in kind."""
    stored = {expression for _, expression in selectors(kind, old)} if old is not None else set()
    found: list[Problem] = []
    if kind == "ResourceClaimTemplate":
        metadata = _dict(_dict(obj.get("spec")).get("metadata"))
        found += label_problems(_dict(metadata.get("labels")), "spec.metadata.labels")
        found += annotation_problems(_dict(metadata.get("annotations")), "spec.metadata.annotations")
    for path, expression in selectors(kind, obj):
        if isinstance(expression, str) and expression in stored:
            continue
        message = compile_problem(expression)
        if message is not None:
            found.append((path, message))
    return found
