"""Reading Kubernetes YAML text into dicts and DRA models: text in, objects out (callers read the files)."""

from __future__ import annotations

from typing import Any

import yaml

from dra_operator.api.resource import DraObject, InvalidObject, is_dra_object, load_object

__all__ = ["InvalidObject", "load_dra_objects", "load_object", "load_yaml_documents"]


def load_yaml_documents(text: str, *, source: str | None = None) -> list[dict[str, Any]]:
    """Every non-empty document of a (multi-document) YAML or JSON text, each of which must be a mapping.

    A `kind: List` document is flattened into its items, as kubectl does.
    """
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        raise InvalidObject([("", f"not valid YAML: {err}")], source=source) from None
    result: list[dict[str, Any]] = []
    for index, document in enumerate(documents):
        if document is None:
            continue
        if not isinstance(document, dict):
            raise InvalidObject(
                [("", f"document {index + 1} is a {type(document).__name__}, expected a Kubernetes object")],
                source=source,
            )
        if document.get("kind") == "List" and isinstance(document.get("items"), list):
            result.extend(item for item in document["items"] if isinstance(item, dict))
        else:
            result.append(document)
    return result


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


_DRA_KINDS = frozenset({"DeviceClass", "ResourceClaim", "ResourceClaimTemplate", "ResourceSlice"})
