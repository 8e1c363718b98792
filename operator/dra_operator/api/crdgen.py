"""CustomResourceDefinitions for the five kinds, generated from the pydantic models.

The schema is structural OpenAPI v3 built by walking the models (not pydantic's JSON schema): every node
typed, no $ref, quantities as `x-kubernetes-int-or-string` with a pattern, limits as maxItems / maxLength /
maxProperties, the models' `crd_rules` as `x-kubernetes-validations`, list-map keys where Kubernetes has
them, and each field's description (`describe`: model -> field name -> text, which `kubectl explain`
shows). Generation is pure (`generate(describe)` returns dicts, `rendered(describe)` file texts); the
descriptions are read from the models' source, and the files read and written, by the `dra-operator crds`
command (dra_operator.crds).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from dra_operator.api.formats import Format
from dra_operator.api.resource import (
    GROUP,
    VERSION,
    DeviceClass,
    DeviceTaintRule,
    KubeModel,
    ResourceClaim,
    ResourceClaimTemplate,
    ResourceSlice,
)

CATEGORY = "dra"

_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

#: A model's field descriptions by Python field name (those of its base classes included).
Describe = Callable[[type[BaseModel]], Mapping[str, str]]


class _Kind:
    """What the CRD says about one kind beyond its schema."""

    def __init__(
        self,
        model: type[KubeModel],
        plural: str,
        short_names: list[str],
        scope: Literal["Cluster", "Namespaced"],
        columns: list[dict[str, str]],
        description: str,
        status: bool = False,
        status_default: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.description = description
        self.kind = model.__name__
        self.plural = plural
        self.short_names = short_names
        self.scope = scope
        self.columns = columns
        self.status = status
        # What an object without any status reads as: the API server fills it in on every read (from etcd,
        # the watch cache and each write's answer), so nothing needs writing to show it.
        self.status_default = status_default


# Short names carry a `dra` prefix: the built-in resource.k8s.io kinds have the same plural names, so on a
# cluster with built-in DRA `kubectl get deviceclasses` means theirs; ours are then reached by the full name
# (`deviceclasses.resource.dra-operator.io`) or by the short names below.
KINDS: tuple[_Kind, ...] = (
    _Kind(
        DeviceClass,
        "deviceclasses",
        ["dradc"],
        "Cluster",
        [_AGE],
        "A class of devices (for example, one vendor's GPUs) that claims ask for by name: CEL selectors that"
        " its devices pass and configuration handed to their drivers."
        " Mirrors resource.k8s.io/v1 DeviceClass.",
    ),
    _Kind(
        ResourceClaim,
        "resourceclaims",
        ["drarc"],
        "Namespaced",
        [
            {"name": "State", "type": "string", "jsonPath": ".status.state"},
            {"name": "Node", "type": "string", "jsonPath": ".status.nodeName"},
            _AGE,
        ],
        "Devices asked for by a workload: dra-operator allocates them and places the Pods that use the claim"
        " on a node where they are. Mirrors resource.k8s.io/v1 ResourceClaim.",
        status=True,
        # A claim nobody allocated yet shows `pending` in the STATE column, as a built-in claim does,
        # without a status write per claim.
        status_default={"state": "pending"},
    ),
    _Kind(
        ResourceClaimTemplate,
        "resourceclaimtemplates",
        ["drarct"],
        "Namespaced",
        [_AGE],
        "A ResourceClaim to make for each Pod that names it: the claim is the Pod's own and is deleted when"
        " the Pod ends. Mirrors resource.k8s.io/v1 ResourceClaimTemplate.",
    ),
    _Kind(
        ResourceSlice,
        "resourceslices",
        ["drars"],
        "Cluster",
        [
            {"name": "Node", "type": "string", "jsonPath": ".spec.nodeName"},
            {"name": "Driver", "type": "string", "jsonPath": ".spec.driver"},
            {"name": "Pool", "type": "string", "jsonPath": ".spec.pool.name"},
            # Kept by the operator (dra_operator.allocation.usage): the free-devices view.
            {"name": "Devices", "type": "integer", "jsonPath": ".status.devices"},
            {"name": "Allocated", "type": "integer", "jsonPath": ".status.allocated"},
            {"name": "Free", "type": "integer", "jsonPath": ".status.free"},
            _AGE,
        ],
        "Devices of one pool that a driver offers, published by dra-operator's node agent for its node."
        " Mirrors resource.k8s.io/v1 ResourceSlice, plus a status with the device counts.",
        status=True,
    ),
    _Kind(
        DeviceTaintRule,
        "devicetaintrules",
        ["dradtr"],
        "Cluster",
        [
            {"name": "Key", "type": "string", "jsonPath": ".spec.taint.key"},
            {"name": "Effect", "type": "string", "jsonPath": ".spec.taint.effect"},
            {"name": "Driver", "type": "string", "jsonPath": ".spec.deviceSelector.driver"},
            {"name": "Pool", "type": "string", "jsonPath": ".spec.deviceSelector.pool"},
            {"name": "Device", "type": "string", "jsonPath": ".spec.deviceSelector.device"},
            # Kept by the operator (dra_operator.allocation.taints): the devices the rule taints now.
            {"name": "Devices", "type": "integer", "jsonPath": ".status.matchedDevices"},
            _AGE,
        ],
        "A taint for every device its selector matches, as if the device's slice carried it: claims that do"
        " not tolerate it get none of them, and with NoExecute their Pods are evicted."
        " Mirrors resource.k8s.io DeviceTaintRule (v1alpha3).",
        status=True,
    ),
)


# ------------------------------------------------------------------------------------------------ schema


def _flatten(tp: Any, meta: list[Any]) -> tuple[Any, list[Any]]:
    """Strip Optional and Annotated from `tp`, collecting Annotated metadata (FieldInfo contents included)."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            base, *extra = get_args(tp)
            for item in extra:
                if isinstance(item, FieldInfo):
                    meta.extend(item.metadata)
                else:
                    meta.append(item)
            tp = base
        elif origin in (Union, types.UnionType):
            members = [arg for arg in get_args(tp) if arg is not type(None)]
            if len(members) != 1:
                raise TypeError(f"cannot express the union {tp!r} in a structural schema")
            tp = members[0]
        else:
            return tp, meta


def _apply_limits(schema: dict[str, Any], meta: Iterable[Any], kind: str) -> None:
    for item in meta:
        if isinstance(item, annotated_types.MaxLen):
            key = {"string": "maxLength", "array": "maxItems", "object": "maxProperties"}[kind]
            schema[key] = item.max_length
        elif isinstance(item, annotated_types.MinLen) and item.min_length > 0:
            key = {"string": "minLength", "array": "minItems", "object": "minProperties"}[kind]
            schema[key] = item.min_length
        elif isinstance(item, annotated_types.Gt) and kind == "integer":
            schema["minimum"] = int(item.gt) + 1  # type: ignore[call-overload]
        elif isinstance(item, annotated_types.Ge) and kind == "integer":
            schema["minimum"] = int(item.ge)  # type: ignore[call-overload]
        elif isinstance(item, Format) and kind == "string":
            if item.pattern is not None:
                schema["pattern"] = item.pattern
            if item.max_length is not None:
                schema.setdefault("maxLength", item.max_length)


def schema_of(annotation: Any, describe: Describe, meta: list[Any] | None = None) -> dict[str, Any]:
    """The structural schema of one Python type as the models use them."""
    tp, meta = _flatten(annotation, list(meta or []))
    formats = [item for item in meta if isinstance(item, Format)]
    if any(f.int_or_string for f in formats):
        schema: dict[str, Any] = {"x-kubernetes-int-or-string": True}
        pattern = next((f.pattern for f in formats if f.pattern), None)
        if pattern:
            schema["pattern"] = pattern
        return schema
    origin = get_origin(tp)
    if origin is Literal:
        values = list(get_args(tp))
        return {"type": "string", "enum": values}
    if tp is str:
        schema = {"type": "string"}
        _apply_limits(schema, meta, "string")
        return schema
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        schema = {"type": "integer", "format": "int64"}
        _apply_limits(schema, meta, "integer")
        return schema
    if origin is list:
        (item,) = get_args(tp)
        schema = {"type": "array", "items": schema_of(item, describe)}
        _apply_limits(schema, meta, "array")
        return schema
    if origin is dict:
        _, value = get_args(tp)
        if value is Any:
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        schema = {"type": "object", "additionalProperties": schema_of(value, describe)}
        _apply_limits(schema, meta, "object")
        return schema
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return model_schema(tp, describe)
    raise TypeError(f"no structural schema for {tp!r}")


def model_schema(model: type[BaseModel], describe: Describe) -> dict[str, Any]:
    """An object schema: properties by JSON name, required fields, defaults, list types and CEL rules."""
    list_keys: dict[str, tuple[str, ...]] = getattr(model, "crd_list_map_keys", {})
    not_required: frozenset[str] = getattr(model, "crd_not_required", frozenset())
    docs = describe(model)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, field in model.model_fields.items():
        json_name = field.alias or name
        prop = schema_of(field.annotation, describe, list(field.metadata))
        if name in docs:
            prop["description"] = docs[name]
        if prop.get("type") == "array":
            keys = list_keys.get(name)
            if keys:
                prop["x-kubernetes-list-type"] = "map"
                prop["x-kubernetes-list-map-keys"] = list(keys)
            else:
                prop["x-kubernetes-list-type"] = "atomic"
        default = field.default
        if isinstance(default, str | int | bool) and not field.is_required():
            prop["default"] = default
        properties[json_name] = prop
        if field.is_required() and name not in not_required:
            required.append(json_name)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    rules = (*getattr(model, "crd_rules", ()), *getattr(model, "crd_transition_rules", ()))
    if rules:
        schema["x-kubernetes-validations"] = [{"rule": rule, "message": message} for rule, message in rules]
    return schema


def kind_schema(model: type[KubeModel], describe: Describe) -> dict[str, Any]:
    """The top-level schema: apiVersion, kind and metadata are the apiserver's; spec and status are ours."""
    properties: dict[str, Any] = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
    }
    required: list[str] = []
    docs = describe(model)
    for name in ("spec", "status"):
        field = model.model_fields.get(name)
        if field is None:
            continue
        properties[name] = schema_of(field.annotation, describe, list(field.metadata))
        if name in docs:
            properties[name]["description"] = docs[name]
        if field.is_required():
            required.append(name)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


# --------------------------------------------------------------------------------------------------- CRDs


def crd_for(kind: _Kind, describe: Describe) -> dict[str, Any]:
    schema = {"description": kind.description, **kind_schema(kind.model, describe)}
    if kind.status_default is not None:
        schema["properties"]["status"]["default"] = kind.status_default
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": schema},
        "additionalPrinterColumns": kind.columns,
    }
    if kind.status:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": kind.short_names,
                "categories": [CATEGORY],
            },
            "scope": kind.scope,
            "versions": [version],
        },
    }


def generate(describe: Describe) -> dict[str, dict[str, Any]]:
    """File name -> CRD, for every kind."""
    return {f"{GROUP}_{kind.plural}.yaml": crd_for(kind, describe) for kind in KINDS}


_HEADER = "# Generated by `dra-operator crds --write crds/` from dra_operator/api/resource.py. Do not edit.\n"


def render(crd: dict[str, Any]) -> str:
    return _HEADER + yaml.safe_dump(crd, sort_keys=False, width=1000, default_flow_style=False)


def rendered(describe: Describe) -> dict[str, str]:
    """File name -> file text, exactly as `--write` writes it."""
    return {name: render(crd) for name, crd in generate(describe).items()}
