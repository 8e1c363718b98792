"""Reading Kubernetes YAML text into dicts and DRA models: text in, objects out (callers read the files).

A text that starts with `{` is read as JSON first, as kubectl does. YAML is read as Kubernetes reads it
(sigs.k8s.io/yaml): JSON values only, so a plain scalar that looks like a date stays a string, and explicitly
tagged non-JSON values (`!!binary`, `!!timestamp`) are refused. Documents nested deeper than MAX_DEPTH levels
(or through a self-referencing alias), or whose aliases expand to more than MAX_VALUES values, are refused
too, so that no input reaches a validator that would recurse or expand without bound.
"""

from __future__ import annotations

import json
from typing import Any, Final

import yaml

from dra_operator.api.resource import DraObject, InvalidObject, is_dra_object, load_object

__all__ = [
    "MAX_DEPTH",
    "MAX_VALUES",
    "InvalidObject",
    "load_dra_objects",
    "load_object",
    "load_yaml_documents",
]

#: Nesting levels one document may have (Kubernetes objects use about 15; opaque parameters a few more).
MAX_DEPTH: Final = 100
#: Values (mappings, lists and scalars) one document may hold once its YAML aliases are expanded.
MAX_VALUES: Final = 1_000_000

_TIMESTAMP_TAG: Final = "tag:yaml.org,2002:timestamp"
_JSON_SCALARS: Final = (str, int, float, bool, type(None))


class _KubernetesLoader(yaml.SafeLoader):
    """SafeLoader without implicit timestamps: `2024-01-01` is a string, as in Kubernetes."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


def _guarded(construct: Any) -> Any:
    """A scalar constructor whose failure on an explicitly tagged value (`!!int abc`) is a YAML error."""

    def guarded(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        try:
            return construct(loader, node)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            message = f"cannot read {node.value!r} as {node.tag.rsplit(':', 1)[-1]}"
            raise yaml.constructor.ConstructorError(None, None, message, node.start_mark) from None

    return guarded


# PyYAML's constructors raise AttributeError, KeyError, ValueError ... on `!!timestamp x`, `!!bool x`.
for _name in ("null", "bool", "int", "float", "binary", "timestamp", "str"):
    _tag = f"tag:yaml.org,2002:{_name}"
    _KubernetesLoader.add_constructor(_tag, _guarded(yaml.SafeLoader.yaml_constructors[_tag]))


class _Refused(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _path(base: str, key: object) -> str:
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{base}[{key}]"
    return f"{base}.{key}" if base else str(key)


def _count_values(node: object, path: str, depth: int, sizes: dict[int, int]) -> int:
    """Values under `node`, aliases expanded (memoized per object, so linear in the YAML text)."""
    if isinstance(node, _JSON_SCALARS):
        return 1
    known = sizes.get(id(node))
    if known is not None:
        return known
    if depth >= MAX_DEPTH:
        raise _Refused(path, f"nested more than {MAX_DEPTH} levels deep (or an alias refers to itself)")
    total = 1
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, _JSON_SCALARS):
                raise _Refused(path, f"a mapping key of type {type(key).__name__} is not valid in JSON")
            total += _count_values(value, _path(path, key), depth + 1, sizes)
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            total += _count_values(value, _path(path, index), depth + 1, sizes)
    else:
        raise _Refused(
            path, f"a value of type {type(node).__name__} is not valid in JSON (drop its YAML tag)"
        )
    if total > MAX_VALUES:
        raise _Refused(path, f"more than {MAX_VALUES} values once YAML aliases are expanded")
    sizes[id(node)] = total
    return total


def load_yaml_documents(text: str, *, source: str | None = None) -> list[dict[str, Any]]:
    """Every non-empty document of a (multi-document) YAML or JSON text, each of which must be a mapping.

    A `kind: List` document is flattened into its items, as kubectl does.
    """
    try:
        documents = _json_document(text)
        if documents is None:
            documents = list(yaml.load_all(text, Loader=_KubernetesLoader))
    except yaml.YAMLError as err:
        raise InvalidObject([("", f"not valid YAML: {err}")], source=source) from None
    except RecursionError:
        message = f"not valid YAML: nested more than {MAX_DEPTH} levels deep"
        raise InvalidObject([("", message)], source=source) from None
    result: list[dict[str, Any]] = []
    for index, document in enumerate(documents):
        if document is None:
            continue
        if not isinstance(document, dict):
            raise InvalidObject(
                [("", f"document {index + 1} is a {type(document).__name__}, expected a Kubernetes object")],
                source=source,
            )
        try:
            _count_values(document, "", 0, {})
            items = _items(document)
        except _Refused as refused:
            where = f"document {index + 1}" + (f", {_short(refused.path)}" if refused.path else "")
            raise InvalidObject([("", f"{where}: {refused.message}")], source=source) from None
        result.extend(items)
    return result


def _json_document(text: str) -> list[Any] | None:
    """A text that starts with `{` read as JSON, as kubectl does (YAML would split `\ud83d\ude00` pairs)."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        return [json.loads(text)]
    except ValueError:
        return None  # not one JSON object: YAML reports it (or reads a YAML flow mapping)


def _short(path: str, limit: int = 120) -> str:
    return path if len(path) <= limit else path[: limit - 3] + "..."


def _items(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The document, or the mapping items of a `kind: List` (others skipped); their kinds must be strings."""
    objects = [document]
    if document.get("kind") == "List" and isinstance(document.get("items"), list):
        objects = [item for item in document["items"] if isinstance(item, dict)]
    for position, obj in enumerate(objects):
        for field in ("apiVersion", "kind"):
            if field in obj and not isinstance(obj[field], str):
                where = f"items[{position}].{field}" if obj is not document else field
                raise _Refused(where, f"must be a string, not {type(obj[field]).__name__}")
    return objects


def load_dra_objects(text: str, *, source: str | None = None) -> tuple[list[DraObject], list[dict[str, Any]]]:
    """The DRA objects of a YAML text as models and all other objects (Pods, Jobs ...) as dicts, in order."""
    models: list[DraObject] = []
    others: list[dict[str, Any]] = []
    for document in load_yaml_documents(text, source=source):
        if is_dra_object(document) or document.get("kind") in _DRA_KINDS:
            models.append(load_object(document, source=source))
        else:
            others.append(document)
    return models, others


_DRA_KINDS = frozenset(
    {"DeviceClass", "ResourceClaim", "ResourceClaimTemplate", "ResourceSlice", "DeviceTaintRule"}
)
