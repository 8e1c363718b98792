"""The JSON Patch (RFC 6902) that turns one object into another, as a mutating webhook answers the API server.

Objects are compared key by key, so a patch touches only what the mutation changed (a label added, the Pod's
claims rewritten) and leaves fields another webhook may set alone; lists are replaced whole, because an index
into a list another webhook changed would patch the wrong element.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _escape(key: str) -> str:
    # RFC 6901: "~" and "/" are escaped inside a reference token, "~" first.
    return key.replace("~", "~0").replace("/", "~1")


def json_patch(old: Mapping[str, Any], new: Mapping[str, Any], path: str = "") -> list[dict[str, Any]]:
    """The operations that make `old` equal to `new`: remove, add and replace, in a stable order."""
    ops: list[dict[str, Any]] = []
    for key in old:
        if key not in new:
            ops.append({"op": "remove", "path": f"{path}/{_escape(key)}"})
    for key, value in new.items():
        where = f"{path}/{_escape(key)}"
        if key not in old:
            ops.append({"op": "add", "path": where, "value": value})
        elif isinstance(value, Mapping) and isinstance(old[key], Mapping):
            ops.extend(json_patch(old[key], value, where))
        elif old[key] != value or type(old[key]) is not type(value):
            ops.append({"op": "replace", "path": where, "value": value})
    return ops
