"""Validation rules, defaults and limits of the resource models, table-driven."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dra_operator.api.quantity import Quantity
from dra_operator.api.resource import (
    API_VERSION,
    UPSTREAM_API_VERSION,
    DeviceClass,
    InvalidObject,
    ResourceClaim,
    ResourceClaimTemplate,
    ResourceSlice,
    load_object,
)


def _claim(requests: list[dict[str, Any]] | None = None, **devices: Any) -> dict[str, Any]:
    if requests is None:
        requests = [{"name": "gpu", "exactly": {"deviceClassName": "gpu-class"}}]
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourceClaim",
        "metadata": {"name": "c", "namespace": "ns"},
        "spec": {"devices": {"requests": requests, **devices}},
    }


def _exact(**fields: Any) -> list[dict[str, Any]]:
    return [{"name": "gpu", "exactly": {"deviceClassName": "gpu-class", **fields}}]


def _slice(spec: dict[str, Any] | None = None, devices: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    base: dict[str, Any] = {
        "driver": "driver.example.com",
        "pool": {"name": "node-1", "generation": 0, "resourceSliceCount": 1},
        "nodeName": "node-1",
        "devices": devices if devices is not None else [{"name": "gpu-0"}],
    }
    if spec is not None:
        base = {k: v for k, v in base.items() if k not in ("nodeName",)} | spec
    return {"apiVersion": API_VERSION, "kind": "ResourceSlice", "metadata": {"name": "s"}, "spec": base}


def _device(**fields: Any) -> dict[str, Any]:
    return {"name": "gpu-0", **fields}


def _selector(expression: str) -> dict[str, Any]:
    return {"cel": {"expression": expression}}


def _constraint(**fields: Any) -> dict[str, Any]:
    return fields


TWO_REQUESTS: list[dict[str, Any]] = [
    {"name": "a", "exactly": {"deviceClassName": "c"}},
    {
        "name": "b",
        "firstAvailable": [{"name": "x", "deviceClassName": "c"}, {"name": "y", "deviceClassName": "c"}],
    },
]

# (case id, object, expected substrings of the error message, or None when the object is valid)
CASES: list[tuple[str, dict[str, Any], list[str] | None]] = [
    ("minimal claim", _claim(), None),
    ("count 0", _claim(_exact(count=0)), ["requests[0].exactly.count", "greater than 0"]),
    ("count negative", _claim(_exact(count=-2)), ["count", "greater than 0"]),
    ("count 3", _claim(_exact(count=3)), None),
    (
        "All with count",
        _claim(_exact(allocationMode="All", count=2)),
        ["must not be set when allocationMode is All"],
    ),
    ("All", _claim(_exact(allocationMode="All")), None),
    ("unknown mode", _claim(_exact(allocationMode="Some")), ["allocationMode"]),
    (
        "neither exactly nor firstAvailable",
        _claim([{"name": "gpu"}]),
        ["exactly one of exactly, firstAvailable"],
    ),
    (
        "both exactly and firstAvailable",
        _claim(
            [
                {
                    "name": "gpu",
                    "exactly": {"deviceClassName": "c"},
                    "firstAvailable": [{"name": "s", "deviceClassName": "c"}],
                }
            ]
        ),
        ["not exactly and firstAvailable"],
    ),
    (
        "duplicate request names",
        _claim([{"name": "gpu", "exactly": {"deviceClassName": "c"}}] * 2),
        ["duplicate request name 'gpu'"],
    ),
    (
        "duplicate subrequest names",
        _claim([{"name": "r", "firstAvailable": [{"name": "s", "deviceClassName": "c"}] * 2}]),
        ["duplicate subrequest name 's'"],
    ),
    ("empty firstAvailable", _claim([{"name": "r", "firstAvailable": []}]), ["firstAvailable"]),
    (
        "9 subrequests",
        _claim(
            [{"name": "r", "firstAvailable": [{"name": f"s{i}", "deviceClassName": "c"} for i in range(9)]}]
        ),
        ["firstAvailable", "at most 8"],
    ),
    (
        "33 requests",
        _claim([{"name": f"r{i}", "exactly": {"deviceClassName": "c"}} for i in range(33)]),
        ["spec.devices.requests", "at most 32"],
    ),
    ("33 selectors", _claim(_exact(selectors=[_selector("true")] * 33)), ["selectors", "at most 32"]),
    (
        "request name not a DNS label",
        _claim([{"name": "GPU", "exactly": {"deviceClassName": "c"}}]),
        ["DNS label"],
    ),
    (
        "class name not a subdomain",
        _claim(_exact(deviceClassName="Bad_Class")),
        ["deviceClassName", "subdomain"],
    ),
    ("missing class name", _claim([{"name": "gpu", "exactly": {}}]), ["deviceClassName", "required"]),
    ("expression too long", _claim(_exact(selectors=[_selector("a" * 10241)])), ["expression", "10240"]),
    ("expression at the limit", _claim(_exact(selectors=[_selector("true" + " " * 10236)])), None),
    (
        "misindented selector",
        _claim(_exact(selectors=[{"cel": None, "expression": "true"}])),
        ["selectors[0]", "`expression` must be nested under `cel`"],
    ),
    ("selector without cel", _claim(_exact(selectors=[{}])), ["selectors[0].cel", "required"]),
    ("unknown field", _claim(_exact(colour="red")), ["exactly.colour", "unknown field"]),
    (
        "constraint with both kinds",
        _claim(TWO_REQUESTS, constraints=[_constraint(matchAttribute="d.io/a", distinctAttribute="d.io/b")]),
        ["exactly one of matchAttribute, distinctAttribute"],
    ),
    ("constraint with neither", _claim(TWO_REQUESTS, constraints=[_constraint()]), ["matchAttribute"]),
    (
        "constraint unqualified attribute",
        _claim(TWO_REQUESTS, constraints=[_constraint(matchAttribute="numa")]),
        ["fully qualified"],
    ),
    (
        "constraint references",
        _claim(
            TWO_REQUESTS, constraints=[_constraint(requests=["a", "b", "b/x"], matchAttribute="d.io/numa")]
        ),
        None,
    ),
    (
        "constraint unknown request",
        _claim(TWO_REQUESTS, constraints=[_constraint(requests=["a", "zz"], matchAttribute="d.io/numa")]),
        ["constraints[0].requests", "'zz' is not the name of a request"],
    ),
    (
        "constraint unknown subrequest",
        _claim(TWO_REQUESTS, constraints=[_constraint(requests=["b/zz"], matchAttribute="d.io/numa")]),
        ["'b/zz'"],
    ),
    (
        "33 constraints",
        _claim(TWO_REQUESTS, constraints=[_constraint(matchAttribute="d.io/n")] * 33),
        ["constraints", "at most 32"],
    ),
    (
        "config for unknown request",
        _claim(TWO_REQUESTS, config=[{"requests": ["q"], "opaque": {"driver": "d.io", "parameters": {}}}]),
        ["config[0].requests", "'q'"],
    ),
    ("config without opaque", _claim(TWO_REQUESTS, config=[{"requests": ["a"]}]), ["opaque"]),
    (
        "toleration Exists with value",
        _claim(_exact(tolerations=[{"key": "k", "operator": "Exists", "value": "v"}])),
        ["Exists must not have a value"],
    ),
    ("capacity request", _claim(_exact(capacity={"requests": {"memory": "1Gi"}})), None),
    (
        "capacity bad quantity",
        _claim(_exact(capacity={"requests": {"memory": "lots"}})),
        ["capacity.requests"],
    ),
    ("bad apiVersion", {**_claim(), "apiVersion": "resource.k8s.io/v1beta1"}, ["apiVersion"]),
    ("upstream apiVersion", {**_claim(), "apiVersion": UPSTREAM_API_VERSION}, None),
    # slices
    ("minimal slice", _slice(), None),
    ("slice allNodes", _slice({"allNodes": True}), None),
    (
        "slice nodeSelector",
        _slice({"nodeSelector": {"nodeSelectorTerms": [{"matchLabels": {}}]}}),
        ["matchLabels", "unknown field"],
    ),
    (
        "slice nodeSelector one term",
        _slice({"nodeSelector": {"nodeSelectorTerms": [{"matchFields": []}]}}),
        None,
    ),
    (
        "slice nodeSelector two terms",
        _slice({"nodeSelector": {"nodeSelectorTerms": [{}, {}]}}),
        ["exactly one term"],
    ),
    (
        "slice no scope",
        _slice({}),
        ["exactly one of nodeName, nodeSelector, allNodes, perDeviceNodeSelection"],
    ),
    ("slice allNodes false", _slice({"allNodes": False}), ["exactly one of nodeName"]),
    ("slice two scopes", _slice({"nodeName": "n", "allNodes": True}), ["not nodeName and allNodes"]),
    (
        "per-device without device scope",
        _slice({"perDeviceNodeSelection": True}),
        ["with perDeviceNodeSelection one of nodeName"],
    ),
    (
        "per-device with device scope",
        _slice({"perDeviceNodeSelection": True}, [_device(nodeName="n1")]),
        None,
    ),
    (
        "device scope without per-device",
        _slice(None, [_device(allNodes=True)]),
        ["need perDeviceNodeSelection"],
    ),
    (
        "device two scopes",
        _slice({"perDeviceNodeSelection": True}, [_device(nodeName="n", allNodes=True)]),
        ["at most one"],
    ),
    ("128 devices", _slice(None, [_device(name=f"gpu-{i}") for i in range(128)]), None),
    ("129 devices", _slice(None, [_device(name=f"gpu-{i}") for i in range(129)]), ["devices", "at most 128"]),
    (
        "65 tainted devices",
        _slice(
            None, [_device(name=f"g{i}", taints=[{"key": "k", "effect": "NoSchedule"}]) for i in range(65)]
        ),
        ["at most 64 devices"],
    ),
    ("duplicate device names", _slice(None, [_device(), _device()]), ["duplicate device name 'gpu-0'"]),
    ("device name not a label", _slice(None, [_device(name="GPU 0")]), ["devices[0].name", "DNS label"]),
    (
        # kube-apiserver 1.36 only warns about upper case in driver names
        "driver upper case",
        {**_slice(), "spec": {**_slice()["spec"], "driver": "Driver.Example"}},
        None,
    ),
    (
        "driver not a subdomain",
        {**_slice(), "spec": {**_slice()["spec"], "driver": "driver_example"}},
        ["driver name"],
    ),
    (
        "driver too long",
        {**_slice(), "spec": {**_slice()["spec"], "driver": "d" * 60 + ".com"}},
        ["no more than 63"],
    ),
    (
        "pool without resourceSliceCount",
        _slice({"nodeName": "n", "pool": {"name": "p"}}),
        ["spec.pool.resourceSliceCount: required"],
    ),
    (
        "pool with slashes",
        _slice({"nodeName": "n", "pool": {"name": "a.b/c-d", "resourceSliceCount": 1}}),
        None,
    ),
    (
        "pool bad part",
        _slice({"nodeName": "n", "pool": {"name": "a//b", "resourceSliceCount": 1}}),
        ["pool.name"],
    ),
    (
        "pool negative generation",
        _slice({"nodeName": "n", "pool": {"name": "p", "generation": -1, "resourceSliceCount": 1}}),
        ["generation"],
    ),
    (
        "pool zero slices",
        _slice({"nodeName": "n", "pool": {"name": "p", "resourceSliceCount": 0}}),
        ["resourceSliceCount"],
    ),
    (
        "attribute types",
        _slice(
            None,
            [
                _device(
                    attributes={
                        "a": {"int": 1},
                        "b": {"bool": False},
                        "c": {"string": "x"},
                        "d.io/v": {"version": "1.2.3-rc.1"},
                    }
                )
            ],
        ),
        None,
    ),
    (
        "attribute two types",
        _slice(None, [_device(attributes={"a": {"int": 1, "string": "x"}})]),
        ["not int and string"],
    ),
    (
        "attribute no type",
        _slice(None, [_device(attributes={"a": {}})]),
        ["exactly one of int, bool, string, version"],
    ),
    ("attribute string 65", _slice(None, [_device(attributes={"a": {"string": "x" * 65}})]), ["at most 64"]),
    ("attribute bool as int", _slice(None, [_device(attributes={"a": {"int": True}})]), ["not a boolean"]),
    (
        "attribute bad version",
        _slice(None, [_device(attributes={"a": {"version": "1.2"}})]),
        ["semantic version"],
    ),
    (
        "attribute name 33",
        _slice(None, [_device(attributes={"a" * 33: {"int": 1}})]),
        ["no more than 32 characters"],
    ),
    ("attribute name C ident", _slice(None, [_device(attributes={"9lives": {"int": 1}})]), ["C identifier"]),
    (
        "attribute bad domain",
        _slice(None, [_device(attributes={"Bad_Domain/x": {"int": 1}})]),
        ["DNS subdomain"],
    ),
    (
        "33 attributes and capacities",
        _slice(
            None,
            [
                _device(
                    attributes={f"a{i}": {"int": i} for i in range(20)},
                    capacity={f"c{i}": {"value": "1"} for i in range(13)},
                )
            ],
        ),
        ["at most 32 entries, got 33"],
    ),
    ("capacity bad quantity", _slice(None, [_device(capacity={"memory": {"value": "64Gb"}})]), ["capacity"]),
    ("int attribute int64 max", _slice(None, [_device(attributes={"n": {"int": 2**63 - 1}})]), None),
    ("int attribute int64 min", _slice(None, [_device(attributes={"n": {"int": -(2**63)}})]), None),
    (
        "int attribute beyond int64",
        _slice(None, [_device(attributes={"n": {"int": 2**63}})]),
        ["out of range for an int64 attribute"],
    ),
]
CASES.append(
    (
        "shared counters beside devices",
        {
            **_slice(),
            "spec": {
                **_slice()["spec"],
                "sharedCounters": [{"name": "set", "counters": {"mem": {"value": "1"}}}],
            },
        },
        ["sharedCounters and devices cannot be in the same slice"],
    )
)


def _class(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "DeviceClass", "metadata": {"name": "gpu"}, "spec": spec}


def _template(metadata: dict[str, Any] | None = None, **devices: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"spec": _claim(**devices)["spec"]}
    if metadata is not None:
        spec["metadata"] = metadata
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "t"},
        "spec": spec,
    }


_OPAQUE = {"opaque": {"driver": "d.io", "parameters": {"a": 1}}}
CASES += [
    ("class", _class(selectors=[_selector("true")], config=[_OPAQUE]), None),
    ("empty class", _class(), None),
    ("class 33 selectors", _class(selectors=[_selector("true")] * 33), ["spec.selectors", "at most 32"]),
    ("class config without opaque", _class(config=[{}]), ["spec.config[0]", "opaque"]),
    ("class 33 configs", _class(config=[_OPAQUE] * 33), ["spec.config", "at most 32"]),
    (
        "class misindented selector",
        _class(selectors=[{"cel": None, "expression": "true"}]),
        ["spec.selectors[0]", "must be nested under `cel`"],
    ),
    ("template", _template(), None),
    ("template labels", _template({"labels": {"a": "b"}, "annotations": {"c": "d"}}), None),
    (
        "template count 0",
        _template(requests=_exact(count=-1)),
        ["spec.spec.devices.requests[0].exactly.count"],
    ),
]


@pytest.mark.parametrize(("obj", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_validation_rule(obj: dict[str, Any], expected: list[str] | None) -> None:
    if expected is None:
        load_object(copy.deepcopy(obj))
        return
    with pytest.raises(InvalidObject) as info:
        load_object(copy.deepcopy(obj), source="cases.yaml")
    message = str(info.value)
    assert message.startswith("cases.yaml: "), message
    assert obj["kind"] in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.mark.parametrize(
    ("fields", "mode", "count"),
    [
        ({}, "ExactCount", 1),
        ({"count": 4}, "ExactCount", 4),
        ({"allocationMode": "All"}, "All", None),
    ],
)
def test_request_defaults(fields: dict[str, Any], mode: str, count: int | None) -> None:
    claim = load_object(_claim(_exact(**fields)))
    assert isinstance(claim, ResourceClaim)
    request = claim.spec.devices.requests[0].exactly  # type: ignore[index]
    assert request is not None
    assert (request.allocation_mode, request.count) == (mode, count)
    dumped = claim.to_dict()["spec"]["devices"]["requests"][0]["exactly"]
    assert dumped.get("count") == count
    assert dumped["allocationMode"] == mode


def test_subrequest_defaults() -> None:
    claim = load_object(_claim(TWO_REQUESTS))
    assert isinstance(claim, ResourceClaim)
    subs = claim.spec.devices.requests[1].first_available  # type: ignore[index]
    assert subs is not None
    assert [(s.name, s.allocation_mode, s.count) for s in subs] == [
        ("x", "ExactCount", 1),
        ("y", "ExactCount", 1),
    ]


def test_attribute_and_capacity_access() -> None:
    device = _device(
        attributes={"type": {"string": "gpu"}, "index": {"int": 3}, "driverVersion": {"version": "550.1.0"}},
        capacity={"memory": {"value": "64Gi"}},
    )
    slice_ = load_object(_slice(None, [device]))
    assert isinstance(slice_, ResourceSlice)
    dev = slice_.spec.devices[0]  # type: ignore[index]
    assert dev.attributes is not None and dev.capacity is not None
    assert [a.value for a in dev.attributes.values()] == ["gpu", 3, "550.1.0"]
    assert dev.capacity["memory"].value == Quantity.parse("68719476736")
    # JSON round trip keeps the Kubernetes names and the canonical quantity
    dumped = slice_.to_dict()["spec"]["devices"][0]
    assert dumped["attributes"]["index"] == {"int": 3}
    assert dumped["capacity"]["memory"] == {"value": str(Quantity.parse("64Gi"))}
    assert load_object(slice_.to_dict()) == slice_


@pytest.mark.parametrize("raw", [64, 1.5, "100m", "1e3", "64Gi"])
def test_capacity_accepts_yaml_numbers(raw: Any) -> None:
    slice_ = load_object(_slice(None, [_device(capacity={"memory": {"value": raw}})]))
    assert isinstance(slice_, ResourceSlice)
    assert slice_.spec.devices[0].capacity["memory"].value == Quantity.parse(str(raw))  # type: ignore[index]


def test_status_and_state_round_trip() -> None:
    obj = _claim()
    obj["status"] = {
        "allocation": {
            "devices": {
                "results": [
                    {"request": "gpu", "driver": "driver.example.com", "pool": "node-1", "device": "gpu-0"}
                ]
            },
            "nodeSelector": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-1"]}]}
                ]
            },
        },
        "reservedFor": [{"resource": "pods", "name": "p", "uid": "u1"}],
        "state": "allocated,reserved",
        "nodeName": "node-1",
    }
    claim = load_object(obj)
    assert isinstance(claim, ResourceClaim)
    assert claim.status is not None and claim.status.allocation is not None
    assert claim.status.allocation.devices.results[0].device == "gpu-0"  # type: ignore[index]
    assert claim.to_dict()["status"] == obj["status"]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (
            {"reservedFor": [{"resource": "pods", "name": "p", "uid": "u"}]},
            "only be set while the claim is allocated",
        ),
        (
            {"allocation": {}, "reservedFor": [{"resource": "pods", "name": "p", "uid": "u"}] * 2},
            "duplicate reservedFor uid",
        ),
        (
            {
                "allocation": {},
                "reservedFor": [{"resource": "pods", "name": "p", "uid": f"u{i}"} for i in range(257)],
            },
            "at most 256",
        ),
        ({"allocation": {}, "reservedFor": [{"resource": "pods", "name": "p"}]}, "uid"),
    ],
)
def test_status_rules(status: dict[str, Any], expected: str) -> None:
    obj = _claim()
    obj["status"] = status
    with pytest.raises(InvalidObject, match=expected):
        load_object(obj)


def test_template_metadata_labels_and_annotations_only() -> None:
    template: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "t"},
        "spec": {"metadata": {"labels": {"a": "b"}}, "spec": _claim()["spec"]},
    }
    loaded = load_object(template)
    assert isinstance(loaded, ResourceClaimTemplate)
    assert loaded.spec.metadata is not None and loaded.spec.metadata.labels == {"a": "b"}
    template["spec"]["metadata"]["name"] = "x"
    with pytest.raises(InvalidObject, match=r"spec\.metadata\.name: unknown field"):
        load_object(template)


def test_object_meta_keeps_unknown_fields() -> None:
    obj = {
        "apiVersion": API_VERSION,
        "kind": "DeviceClass",
        "metadata": {"name": "c", "managedFields": [{"manager": "kubectl"}], "ownerReferences": []},
    }
    loaded = load_object(obj)
    assert isinstance(loaded, DeviceClass)
    assert loaded.to_dict()["metadata"] == obj["metadata"]


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"kind": "Pod", "apiVersion": "v1"}, "expected one of DeviceClass"),
        ({"kind": "DeviceClass", "apiVersion": "v1"}, "apiVersion: must be"),
        (["not", "a", "dict"], "expected an object"),
    ],
)
def test_load_object_rejects_other_things(obj: Any, expected: str) -> None:
    with pytest.raises(InvalidObject, match=expected):
        load_object(obj)


def test_error_lists_every_problem_with_paths() -> None:
    obj = _claim(
        [
            {"name": "a", "exactly": {"deviceClassName": "c", "count": 0}},
            {"name": "b", "exactly": {"deviceClassName": "c", "bogus": 1}},
        ]
    )
    with pytest.raises(InvalidObject) as info:
        load_object(obj)
    paths = [path for path, _ in info.value.problems]
    assert "spec.devices.requests[0].exactly.count" in paths
    assert "spec.devices.requests[1].exactly.bogus" in paths
    assert info.value.kind == "ResourceClaim" and info.value.name == "ns/c"
