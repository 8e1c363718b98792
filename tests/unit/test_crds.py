"""The CRDs in crds/: in sync with the models, structural, and with CEL rules that agree with the models."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from celpy import celtypes, json_to_cel  # type: ignore[attr-defined]
from pydantic import ValidationError

from dra_operator import crds
from dra_operator.api.resource import (
    API_VERSION,
    GROUP,
    KINDS,
    TAINT_KEY_PATTERN,
    TAINT_VALUE_PATTERN,
    DeviceTaint,
    ExactDeviceRequest,
    InvalidObject,
    ResourceClaimSpec,
    _DeviceSelection,
    load_object,
)

CRDS = Path(__file__).resolve().parents[2] / "crds"


def test_crds_directory_is_in_sync_with_the_models() -> None:
    stale = crds.stale_files(CRDS)
    assert stale == [], f"crds/ is stale ({stale}): run `dra-operator crds --write crds/`"


def test_check_command_reports_stale_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser()
    assert crds.main(parser.parse_args(["--write", str(tmp_path)])) == 0
    assert crds.main(parser.parse_args(["--check", str(tmp_path)])) == 0
    victim = next(tmp_path.glob("*.yaml"))
    victim.write_text(victim.read_text() + "# edited\n")
    (tmp_path / "extra.yaml").write_text("{}\n")
    assert crds.main(parser.parse_args(["--check", str(tmp_path)])) == 1
    err = capsys.readouterr().err
    assert victim.name in err and "extra.yaml" in err


def _parser() -> Any:
    import argparse

    parser = argparse.ArgumentParser()
    crds.add_arguments(parser)
    return parser


def _crds() -> dict[str, dict[str, Any]]:
    return {crd["spec"]["names"]["kind"]: crd for crd in crds.generate().values()}


@pytest.mark.parametrize(
    ("kind", "scope", "plural", "status", "columns"),
    [
        ("DeviceClass", "Cluster", "deviceclasses", False, ["Age"]),
        ("ResourceClaim", "Namespaced", "resourceclaims", True, ["State", "Node", "Age"]),
        ("ResourceClaimTemplate", "Namespaced", "resourceclaimtemplates", False, ["Age"]),
        (
            "ResourceSlice",
            "Cluster",
            "resourceslices",
            True,
            ["Node", "Driver", "Pool", "Devices", "Allocated", "Free", "Age"],
        ),
        (
            "DeviceTaintRule",
            "Cluster",
            "devicetaintrules",
            True,
            ["Key", "Effect", "Driver", "Pool", "Device", "Devices", "Age"],
        ),
    ],
)
def test_crd_names_scope_status_and_columns(
    kind: str, scope: str, plural: str, status: bool, columns: list[str]
) -> None:
    crd = _crds()[kind]
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{plural}.{GROUP}"
    assert spec["scope"] == scope
    assert spec["names"]["plural"] == plural
    assert spec["names"]["categories"] == ["dra"]
    [version] = spec["versions"]
    assert ("status" in version.get("subresources", {})) is status
    assert [c["name"] for c in version["additionalPrinterColumns"]] == columns


def test_short_names_do_not_shadow_builtin_resource_names() -> None:
    builtin = {"deviceclass", "deviceclasses", "resourceclaim", "resourceclaims", "resourceclaimtemplate"}
    builtin |= {
        "resourceclaimtemplates",
        "resourceslice",
        "resourceslices",
        "devicetaintrule",
        "devicetaintrules",
    }
    short = [name for crd in _crds().values() for name in crd["spec"]["names"]["shortNames"]]
    assert len(short) == len(set(short)) == 5
    assert not builtin & set(short)
    assert all(name.startswith("dra") for name in short)


def test_printer_columns_point_at_fields_the_schema_has() -> None:
    for crd in _crds().values():
        [version] = crd["spec"]["versions"]
        schema = version["schema"]["openAPIV3Schema"]
        for column in version["additionalPrinterColumns"]:
            if column["jsonPath"] == ".metadata.creationTimestamp":
                continue
            node = schema
            for part in column["jsonPath"].strip(".").split("."):
                node = node["properties"][part]
            assert node["type"] == column["type"], column


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if "items" in schema:
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def _undescribed(schema: dict[str, Any], path: str) -> Iterator[str]:
    for name, prop in (schema.get("properties") or {}).items():
        if "description" not in prop:
            yield f"{path}.{name}"
        yield from _undescribed(prop, f"{path}.{name}")
        if prop.get("type") == "array":
            yield from _undescribed(prop["items"], f"{path}.{name}[]")
        if isinstance(prop.get("additionalProperties"), dict):
            yield from _undescribed(prop["additionalProperties"], f"{path}.{name}{{}}")


def test_every_field_of_spec_and_status_is_described_for_kubectl_explain() -> None:
    """Each kind and every field under spec and status has a description (the field's attribute docstring
    in api/resource.py), so that `kubectl explain` explains it; a field added without one fails here."""
    undescribed = []
    for crd in crds.generate().values():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        kind = crd["spec"]["names"]["kind"]
        assert schema["description"], kind
        undescribed += [f"{kind}.{top}" for top in ("spec", "status") if top in schema["properties"]
                        and "description" not in schema["properties"][top]]  # fmt: skip
        undescribed += [
            p
            for top in ("spec", "status")
            for p in _undescribed(schema["properties"].get(top, {}), f"{kind}.{top}")
        ]
    assert undescribed == []
    assert crds.field_docs(ResourceClaimSpec)["devices"].startswith("The devices this claim asks for.")
    # Inherited fields keep the docstring of the class that declares them.
    assert crds.field_docs(ExactDeviceRequest)["count"] == crds.field_docs(_DeviceSelection)["count"]


def test_every_kind_has_a_crd() -> None:
    assert set(_crds()) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_schema_is_structural(kind: str) -> None:
    [version] = _crds()[kind]["spec"]["versions"]
    for path, node in _nodes(version["schema"]["openAPIV3Schema"]):
        assert not {"$ref", "anyOf", "oneOf", "allOf", "not"} & node.keys(), path
        assert (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ), f"{path} has no type"
        if node.get("type") == "array":
            assert node.get("maxItems"), f"{path}: arrays carry maxItems (bounds CEL cost and object size)"
            assert node["x-kubernetes-list-type"] in ("atomic", "map"), path
            for key in node.get("x-kubernetes-list-map-keys", []):
                assert key in node["items"].get("required", []), (
                    f"{path}: list-map key {key} must be required"
                )
        if node.get("x-kubernetes-int-or-string"):
            assert "pattern" in node, path


@pytest.mark.parametrize(
    ("kind", "path", "facts"),
    [
        ("ResourceClaim", ".spec.devices.requests", {"maxItems": 32, "x-kubernetes-list-map-keys": ["name"]}),
        ("ResourceClaim", ".spec.devices.requests[].firstAvailable", {"maxItems": 8, "minItems": 1}),
        ("ResourceClaim", ".spec.devices.requests[].exactly.selectors", {"maxItems": 32}),
        (
            "ResourceClaim",
            ".spec.devices.requests[].exactly.selectors[].cel.expression",
            {"maxLength": 10240},
        ),
        ("ResourceClaim", ".spec.devices.requests[].exactly.count", {"minimum": 1}),
        ("ResourceClaim", ".spec.devices.requests[].exactly.allocationMode", {"default": "ExactCount"}),
        ("ResourceClaim", ".spec.devices.constraints", {"maxItems": 32}),
        ("ResourceClaim", ".status.reservedFor", {"maxItems": 256, "x-kubernetes-list-map-keys": ["uid"]}),
        ("ResourceSlice", ".spec.devices", {"maxItems": 128, "x-kubernetes-list-map-keys": ["name"]}),
        ("ResourceSlice", ".spec.devices[].attributes", {"maxProperties": 32}),
        ("ResourceSlice", ".spec.devices[].attributes{}.string", {"maxLength": 64}),
        (
            "ResourceSlice",
            ".spec.devices[].name",
            {"maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        ),
        ("ResourceSlice", ".spec.devices[].capacity{}.value", {"x-kubernetes-int-or-string": True}),
        ("DeviceClass", ".spec.selectors", {"maxItems": 32}),
        ("DeviceTaintRule", ".spec.deviceSelector.selectors", {"maxItems": 32}),
        ("DeviceTaintRule", ".spec.deviceSelector.device", {"maxLength": 63}),
        ("DeviceTaintRule", ".spec.taint.key", {"maxLength": 316, "pattern": TAINT_KEY_PATTERN}),
        ("DeviceTaintRule", ".spec.taint.value", {"maxLength": 63, "pattern": TAINT_VALUE_PATTERN}),
        ("DeviceTaintRule", ".spec.taint.effect", {"enum": ["NoSchedule", "NoExecute", "None"]}),
        ("DeviceTaintRule", ".status.matchedDevices", {"minimum": 0}),
        ("DeviceTaintRule", ".status.conditions", {"maxItems": 8, "x-kubernetes-list-map-keys": ["type"]}),
        ("ResourceSlice", ".spec.devices[].taints[].key", {"pattern": TAINT_KEY_PATTERN}),
    ],
)
def test_schema_carries_the_limits(kind: str, path: str, facts: dict[str, Any]) -> None:
    [version] = _crds()[kind]["spec"]["versions"]
    nodes = dict(_nodes(version["schema"]["openAPIV3Schema"]))
    assert facts.items() <= nodes[path].items(), nodes[path]


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("example.com/maintenance", True),
        ("maintenance", True),
        ("a.b-c/My_Name.1", True),
        ("x" * 63, True),
        ("x" * 64, False),
        ("bad key!", False),
        ("a/b/c", False),
        ("/x", False),
        ("x/", False),
        ("Example.com/x", False),
        ("-x", False),
        ("x_", False),
    ],
)
def test_taint_key_pattern_agrees_with_the_model(key: str, valid: bool) -> None:
    assert bool(re.fullmatch(TAINT_KEY_PATTERN, key)) is valid
    taint = {"key": key, "effect": "NoSchedule"}
    if valid:
        DeviceTaint.model_validate(taint)
    else:
        with pytest.raises(ValidationError, match="Invalid value"):
            DeviceTaint.model_validate(taint)


@pytest.mark.parametrize(
    ("value", "valid"),
    [("", True), ("planned", True), ("v1.2_x-3", True), ("v" * 63, True), ("v" * 64, False), ("bad!", False)],
)
def test_taint_value_pattern_agrees_with_the_model(value: str, valid: bool) -> None:
    assert bool(re.fullmatch(TAINT_VALUE_PATTERN, value)) is valid
    taint = {"key": "k", "value": value, "effect": "NoSchedule"}
    if valid:
        DeviceTaint.model_validate(taint)
    else:
        with pytest.raises(ValidationError):
            DeviceTaint.model_validate(taint)


def test_status_fields_for_printer_columns_exist_in_the_model() -> None:
    [version] = _crds()["ResourceClaim"]["spec"]["versions"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"allocation", "reservedFor", "devices", "state", "nodeName"} <= status.keys()


def test_written_files_parse_as_the_generated_dicts() -> None:
    for name, crd in crds.generate().items():
        assert yaml.safe_load((CRDS / name).read_text()) == crd


# ---------------------------------------------------------------------- CEL rules vs. Python validators

_ENV = celpy.Environment()


def _apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict) and "properties" in schema:
        for name, child in schema["properties"].items():
            if name not in value and "default" in child:
                value[name] = child["default"]
            if name in value:
                _apply_defaults(child, value[name])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _apply_defaults(schema["items"], item)
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for item in value.values():
            _apply_defaults(schema["additionalProperties"], item)
    return value


def _split(text: Any, separator: Any) -> Any:
    # Kubernetes enables the CEL strings extension; cel-python lacks its split().
    return celtypes.ListType([celtypes.StringType(part) for part in str(text).split(str(separator))])


_NO_OLD = object()


def _rule_failures(schema: dict[str, Any], value: Any, old: Any = _NO_OLD) -> list[str]:
    """Evaluate every x-kubernetes-validations rule where the object has a value, like the apiserver does:
    transition rules (they read `oldSelf`) only where `old` has a value too (an update)."""
    failures: list[str] = []
    for rule in schema.get("x-kubernetes-validations", []):
        variables = {"self": json_to_cel(value)}
        if "oldSelf" in rule["rule"]:
            if old is _NO_OLD:
                continue
            variables["oldSelf"] = json_to_cel(old)
        program = _ENV.program(_ENV.compile(rule["rule"]), functions={"split": _split})
        if not program.evaluate(variables):
            failures.append(rule["message"])
    if isinstance(value, dict):
        olds = old if isinstance(old, dict) else {}
        for name, child in schema.get("properties", {}).items():
            if name in value:
                failures += _rule_failures(child, value[name], olds.get(name, _NO_OLD))
        if isinstance(schema.get("additionalProperties"), dict):
            for key, item in value.items():
                failures += _rule_failures(schema["additionalProperties"], item, olds.get(key, _NO_OLD))
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            failures += _rule_failures(schema["items"], item)  # no correlation of list items
    return failures


def _claim(devices: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "ResourceClaim",
        "metadata": {"name": "c"},
        "spec": {"devices": devices},
    }
    if status is not None:
        obj["status"] = status
    return obj


def _slice(**spec: Any) -> dict[str, Any]:
    base = {"driver": "d.io", "pool": {"name": "p", "generation": 1, "resourceSliceCount": 1}}
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourceSlice",
        "metadata": {"name": "s"},
        "spec": base | spec,
    }


def _rule(**spec: Any) -> dict[str, Any]:
    taint = {"key": "example.com/maintenance", "value": "planned", "effect": "NoExecute"}
    return {
        "apiVersion": API_VERSION,
        "kind": "DeviceTaintRule",
        "metadata": {"name": "r"},
        "spec": {"taint": taint} | spec,
    }


_EXACT = {"name": "a", "exactly": {"deviceClassName": "c"}}
_FIRST = {"name": "b", "firstAvailable": [{"name": "x", "deviceClassName": "c"}]}
_DEVICE = {"name": "d"}

RULE_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("good claim", _claim({"requests": [_EXACT, _FIRST]}), None),
    ("neither", _claim({"requests": [{"name": "a"}]}), "exactly one of exactly or firstAvailable"),
    (
        "both",
        _claim({"requests": [{**_EXACT, **_FIRST, "name": "a"}]}),
        "exactly one of exactly or firstAvailable",
    ),
    (
        "All with count",
        _claim(
            {
                "requests": [
                    {"name": "a", "exactly": {"deviceClassName": "c", "allocationMode": "All", "count": 1}}
                ]
            }
        ),
        "count must not be set when allocationMode is All",
    ),
    (
        "selector pruned to {}",
        _claim({"requests": [{"name": "a", "exactly": {"deviceClassName": "c", "selectors": [{}]}}]}),
        "`expression` must be nested under `cel`",
    ),
    (
        "constraint both",
        _claim(
            {
                "requests": [_EXACT],
                "constraints": [{"matchAttribute": "d.io/a", "distinctAttribute": "d.io/b"}],
            }
        ),
        "exactly one of matchAttribute or distinctAttribute",
    ),
    (
        "constraint neither",
        _claim({"requests": [_EXACT], "constraints": [{}]}),
        "exactly one of matchAttribute",
    ),
    (
        "constraint refs",
        _claim(
            {
                "requests": [_EXACT, _FIRST],
                "constraints": [{"requests": ["a", "b/x"], "matchAttribute": "d.io/n"}],
            }
        ),
        None,
    ),
    (
        "constraint unknown ref",
        _claim(
            {
                "requests": [_EXACT, _FIRST],
                "constraints": [{"requests": ["zz/x"], "matchAttribute": "d.io/n"}],
            }
        ),
        "constraints: each entry of requests must name a request",
    ),
    (
        "config unknown ref",
        _claim(
            {
                "requests": [_EXACT],
                "config": [{"requests": ["z"], "opaque": {"driver": "d.io", "parameters": {}}}],
            }
        ),
        "config: each entry of requests must name a request",
    ),
    (
        "reserved while unallocated",
        _claim({"requests": [_EXACT]}, {"reservedFor": [{"resource": "pods", "name": "p", "uid": "u"}]}),
        "reservedFor may only be set while the claim is allocated",
    ),
    ("good slice", _slice(nodeName="n", devices=[_DEVICE]), None),
    ("slice no scope", _slice(devices=[_DEVICE]), "exactly one of nodeName, nodeSelector, allNodes"),
    ("slice allNodes false", _slice(allNodes=False), "exactly one of nodeName"),
    ("slice two scopes", _slice(nodeName="n", allNodes=True), "exactly one of nodeName"),
    (
        "slice two terms",
        _slice(nodeSelector={"nodeSelectorTerms": [{}, {}]}),
        "nodeSelector must have exactly one term",
    ),
    (
        "device scope without per-device",
        _slice(nodeName="n", devices=[{"name": "d", "nodeName": "n"}]),
        "need perDeviceNodeSelection",
    ),
    ("per-device", _slice(perDeviceNodeSelection=True, devices=[{"name": "d", "allNodes": True}]), None),
    (
        "device two scopes",
        _slice(perDeviceNodeSelection=True, devices=[{"name": "d", "allNodes": True, "nodeName": "n"}]),
        "at most one of nodeName, nodeSelector or allNodes",
    ),
    (
        "counters beside devices",
        _slice(
            allNodes=True,
            devices=[_DEVICE],
            sharedCounters=[{"name": "s", "counters": {"c": {"value": "1"}}}],
        ),
        "sharedCounters and devices cannot be in the same slice",
    ),
    (
        "attribute two types",
        _slice(nodeName="n", devices=[{"name": "d", "attributes": {"a": {"int": 1, "bool": True}}}]),
        "exactly one of int, bool, string or version",
    ),
    (
        "attribute no type",
        _slice(nodeName="n", devices=[{"name": "d", "attributes": {"a": {}}}]),
        "exactly one of int, bool, string or version",
    ),
    (
        "33 attributes and capacities",
        _slice(
            nodeName="n",
            devices=[
                {
                    "name": "d",
                    "attributes": {f"a{i}": {"int": i} for i in range(17)},
                    "capacity": {f"c{i}": {"value": "1"} for i in range(16)},
                }
            ],
        ),
        "attributes and capacity together must have at most 32",
    ),
    ("rule without selector", _rule(), None),
    (
        "rule with every selector",
        _rule(
            deviceSelector={
                "driver": "gpu.nvidia.com",
                "pool": "node-1",
                "device": "gpu-0",
                "selectors": [{"cel": {"expression": "true"}}],
            }
        ),
        None,
    ),
    (
        "rule selector pruned to {}",
        _rule(deviceSelector={"selectors": [{}]}),
        "`expression` must be nested under `cel`",
    ),
    (
        "rule taint key prefix over 253",
        _rule(taint={"key": "a" * 254 + "/x", "effect": "None"}),
        "taint.key: prefix part must be no more than 253 bytes",
    ),
]


@pytest.mark.parametrize(("obj", "expected"), [c[1:] for c in RULE_CASES], ids=[c[0] for c in RULE_CASES])
def test_crd_rules_agree_with_the_models(obj: dict[str, Any], expected: str | None) -> None:
    [version] = _crds()[obj["kind"]]["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    failures = _rule_failures(schema, _apply_defaults(schema, copy.deepcopy(obj)))
    if expected is None:
        assert failures == []
        load_object(obj)
    else:
        assert any(expected in failure for failure in failures), failures
        with pytest.raises(InvalidObject):
            load_object(obj)


def test_unknown_subrequest_is_left_to_the_models() -> None:
    # Documented gap: the CRD checks only the request part of `request/subrequest` (CEL cost budget).
    obj = _claim(
        {"requests": [_EXACT, _FIRST], "constraints": [{"requests": ["b/y"], "matchAttribute": "d.io/n"}]}
    )
    [version] = _crds()["ResourceClaim"]["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    assert _rule_failures(schema, _apply_defaults(schema, copy.deepcopy(obj))) == []
    with pytest.raises(InvalidObject, match="'b/y' is not the name of a request"):
        load_object(obj)


def _slice(**spec: Any) -> dict[str, Any]:
    base = {"driver": "gpu.example.com", "pool": {"name": "p", "resourceSliceCount": 1}, "nodeName": "n1"}
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourceSlice",
        "metadata": {"name": "s"},
        "spec": base | spec,
    }


def _template(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "t"},
        "spec": spec,
    }


_ALLOCATION = {
    "devices": {"results": [{"request": "gpu", "driver": "d.example.com", "pool": "p", "device": "g0"}]}
}
_GPU = {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu"}}]}
_TWO_GPUS = {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu", "count": 2}}]}

# (id, old object, new object, expected message or None): Kubernetes' update validation of DRA objects
# (ValidateResourceClaimUpdate, ...StatusUpdate, ...TemplateUpdate, ...SliceUpdate), as the CRDs say it.
UPDATE_CASES = [
    ("claim status only", _claim(_GPU), _claim(_GPU, {"allocation": _ALLOCATION}), None),
    ("claim spec changed", _claim(_GPU), _claim(_TWO_GPUS), "field is immutable"),
    (
        "allocation changed",
        _claim(_GPU, {"allocation": _ALLOCATION}),
        _claim(_GPU, {"allocation": {**_ALLOCATION, "nodeSelector": {"nodeSelectorTerms": []}}}),
        "field is immutable",
    ),
    ("allocation removed", _claim(_GPU, {"allocation": _ALLOCATION}), _claim(_GPU, {}), None),
    (
        "template spec changed",
        {
            "apiVersion": API_VERSION,
            "kind": "ResourceClaimTemplate",
            "metadata": {"name": "t"},
            "spec": {"spec": {"devices": _GPU}},
        },
        {
            "apiVersion": API_VERSION,
            "kind": "ResourceClaimTemplate",
            "metadata": {"name": "t"},
            "spec": {"spec": {"devices": _TWO_GPUS}},
        },
        "field is immutable",
    ),
    (
        "template metadata changed",
        _template({"spec": {"devices": _GPU}}),
        _template({"metadata": {"labels": {"a": "b"}}, "spec": {"devices": _GPU}}),
        "metadata: field is immutable",
    ),
    ("slice devices changed", _slice(), _slice(devices=[{"name": "g0"}]), None),
    (
        "slice pool generation moved",
        _slice(),
        _slice(pool={"name": "p", "generation": 2, "resourceSliceCount": 1}),
        None,
    ),
    ("slice driver changed", _slice(), _slice(driver="other.example.com"), "driver is immutable"),
    (
        "slice pool renamed",
        _slice(),
        _slice(pool={"name": "q", "resourceSliceCount": 1}),
        "pool.name is immutable",
    ),
    ("slice node changed", _slice(), _slice(nodeName="n2"), "nodeName is immutable"),
    (
        "slice node dropped",
        _slice(),
        _slice(nodeName=None)
        | {"spec": {k: v for k, v in _slice()["spec"].items() if k != "nodeName"} | {"allNodes": True}},
        "nodeName is immutable",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "expected"), [c[1:] for c in UPDATE_CASES], ids=[c[0] for c in UPDATE_CASES]
)
def test_updates_keep_what_kubernetes_keeps_immutable(
    old: dict[str, Any], new: dict[str, Any], expected: str | None
) -> None:
    [version] = _crds()[new["kind"]]["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    old, new = (_apply_defaults(schema, copy.deepcopy(o)) for o in (old, new))
    assert _rule_failures(schema, old) == [] and _rule_failures(schema, new) == []  # each valid on its own
    failures = _rule_failures(schema, new, old)
    assert failures == ([] if expected is None else [expected])
