"""Property-based tests of the YAML/JSON loader (dra_operator.api.loader), as `dra-operator simulate` uses it.

Properties: any text, any JSON-like structure and any corruption of a valid object either loads or is refused
with InvalidObject and a non-empty message (nothing else escapes); valid objects round-trip through the models
and through YAML text. Profiles and example counts: tests/conftest.py.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from dra_operator.api.loader import (
    MAX_DEPTH,
    InvalidObject,
    load_dra_objects,
    load_object,
    load_yaml_documents,
)
from dra_operator.api.pod import check_pod_claims
from dra_operator.api.resource import API_VERSIONS, DraObject, ResourceSlice

DRA_KINDS = ("DeviceClass", "ResourceClaim", "ResourceClaimTemplate", "ResourceSlice", "DeviceTaintRule")
WORKLOAD_KINDS = ("Pod", "Job", "CronJob", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "List")

# ------------------------------------------------------------------------------------------- strategies

# Every character, lone surrogates included (YAML's "\ud800" escape produces them).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=200)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=24,
)

label = st.from_regex(r"\A[a-z]([a-z0-9-]{0,10}[a-z0-9])?\Z")
subdomain = st.lists(label, min_size=1, max_size=3).map(".".join).filter(lambda s: len(s) <= 253)
driver = st.builds(lambda a, b: f"{a}.{b}", label, label).filter(lambda s: len(s) <= 63)
quantity = st.builds(
    lambda n, suffix: f"{n}{suffix}",
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(["", "m", "k", "M", "G", "Ki", "Mi", "Gi", "Ti", "e3"]),
)
version = st.builds(
    lambda a, b, c, pre: f"{a}.{b}.{c}{pre}",
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 99),
    st.sampled_from(["", "-rc.1", "-alpha", "+build.5"]),
)
attribute = st.one_of(
    st.builds(lambda v: {"int": v}, st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    st.builds(lambda v: {"bool": v}, st.booleans()),
    st.builds(lambda v: {"string": v}, st.text(max_size=20)),
    st.builds(lambda v: {"version": v}, version),
)
identifier = st.from_regex(r"\A[a-z][a-zA-Z0-9_]{0,10}\Z")
attribute_name = st.one_of(identifier, st.builds(lambda d, n: f"{d}/{n}", driver, identifier))
selector = st.sampled_from(
    [
        'device.attributes["driver.example.com"].type == "gpu"',
        'device.capacity["driver.example.com"].memory.compareTo(quantity("64Gi")) >= 0',
        "device.driver == 'gpu.nvidia.com'",
        "true",
    ]
).map(lambda expression: {"cel": {"expression": expression}})


def metadata(namespaced: bool) -> st.SearchStrategy[dict[str, Any]]:
    base: dict[str, st.SearchStrategy[Any]] = {"name": subdomain}
    if namespaced:
        base["namespace"] = label
    return st.fixed_dictionaries(
        base, optional={"labels": st.dictionaries(label, label, max_size=3), "uid": st.uuids().map(str)}
    )


@st.composite
def device_selection(draw: st.DrawFn) -> dict[str, Any]:
    selection: dict[str, Any] = {"deviceClassName": draw(subdomain)}
    if draw(st.booleans()):
        selection["selectors"] = draw(st.lists(selector, max_size=3))
    if draw(st.booleans()):
        selection["allocationMode"] = "All"
    elif draw(st.booleans()):
        selection["count"] = draw(st.integers(min_value=1, max_value=8))
    return selection


@st.composite
def claim_spec(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(label, min_size=1, max_size=4, unique=True))
    requests: list[dict[str, Any]] = []
    for name in names:
        if draw(st.booleans()):
            requests.append({"name": name, "exactly": draw(device_selection())})
        else:
            subs = draw(st.lists(label, min_size=1, max_size=3, unique=True))
            requests.append(
                {"name": name, "firstAvailable": [{"name": s, **draw(device_selection())} for s in subs]}
            )
    devices: dict[str, Any] = {"requests": requests}
    if draw(st.booleans()):
        field = draw(st.sampled_from(["matchAttribute", "distinctAttribute"]))
        refs = draw(st.lists(st.sampled_from(names), max_size=2, unique=True))
        devices["constraints"] = [{"requests": refs, field: draw(driver) + "/" + draw(identifier)}]
    return {"devices": devices}


taint = st.fixed_dictionaries(
    {
        "key": label | st.builds(lambda prefix, name: f"{prefix}/{name}", subdomain, label),
        "effect": st.sampled_from(["NoSchedule", "NoExecute", "None"]),
    },
    optional={"value": label, "timeAdded": st.just("2025-01-01T00:00:00Z")},
)


@st.composite
def device(draw: st.DrawFn) -> dict[str, Any]:
    result: dict[str, Any] = {"name": draw(label)}
    attributes = draw(st.dictionaries(attribute_name, attribute, max_size=4))
    capacity = draw(st.dictionaries(attribute_name, quantity.map(lambda q: {"value": q}), max_size=3))
    if attributes:
        result["attributes"] = attributes
    if capacity:
        result["capacity"] = capacity
    taints = draw(st.lists(taint, max_size=2))
    if taints:
        result["taints"] = taints
    return result


taint_selector = st.fixed_dictionaries(
    {},
    optional={
        "driver": driver,
        "pool": label,
        "device": label,
        "selectors": st.lists(selector, max_size=3),
    },
)


@st.composite
def dra_object(draw: st.DrawFn) -> dict[str, Any]:
    """A valid object of one of the five kinds, as the dict a user would write."""
    kind = draw(st.sampled_from(DRA_KINDS))
    head = {"apiVersion": draw(st.sampled_from(API_VERSIONS)), "kind": kind}
    spec: dict[str, Any]
    if kind == "DeviceTaintRule":
        spec = {"taint": draw(taint)}
        if draw(st.booleans()):
            spec["deviceSelector"] = draw(taint_selector)
        return {**head, "metadata": draw(metadata(False)), "spec": spec}
    if kind == "DeviceClass":
        spec = {"selectors": draw(st.lists(selector, max_size=3))}
        return {**head, "metadata": draw(metadata(False)), "spec": spec}
    if kind == "ResourceClaim":
        return {**head, "metadata": draw(metadata(True)), "spec": draw(claim_spec())}
    if kind == "ResourceClaimTemplate":
        return {**head, "metadata": draw(metadata(True)), "spec": {"spec": draw(claim_spec())}}
    devices = draw(st.lists(device(), max_size=4, unique_by=lambda d: d["name"]))
    spec = {
        "driver": draw(driver),
        "pool": {"name": draw(label), "resourceSliceCount": draw(st.integers(1, 4))},
        "nodeName": draw(label),
        "devices": devices,
    }
    return {**head, "metadata": draw(metadata(False)), "spec": spec}


def _positions(node: Any) -> list[tuple[Any, Any]]:
    """(container, key) of every value inside `node`, in a stable order."""
    found: list[tuple[Any, Any]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found.append((node, key))
        found.extend(_positions(value))
    return found


@st.composite
def corrupted(draw: st.DrawFn, valid: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid object with up to three values replaced by junk (wrong types, nulls) or removed."""
    obj = draw(valid)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        positions = _positions(obj)
        if not positions:
            break
        container, key = draw(st.sampled_from(positions))
        if isinstance(container, dict) and draw(st.booleans()):
            del container[key]
        else:
            container[key] = draw(json_values)
    return obj


# ------------------------------------------------------------------------------------------- checks


def loads_or_refuses(text: str) -> tuple[list[Any], list[dict[str, Any]]] | None:
    """load_dra_objects' result, or None once the refusal is checked: an InvalidObject with a message."""
    try:
        models, others = load_dra_objects(text, source="input.yaml")
    except InvalidObject as err:
        message = str(err)
        assert message.startswith("input.yaml"), message
        assert err.problems and all(text for _, text in err.problems), message
        message.encode()  # printable: never carries a lone surrogate into a terminal or an event
        return None
    assert all(isinstance(m, DraObject) for m in models)
    assert all(isinstance(o, dict) for o in others)
    return models, others


# ------------------------------------------------------------------------------------------- properties


@given(any_text)
@example("[" * 600 + "]" * 600)  # found: RecursionError from the YAML parser
@example("kind: [1]\n")  # found: TypeError (unhashable kind)
@example("kind: {a: 1}\napiVersion: resource.k8s.io/v1\n")  # found: TypeError in is_dra_object
@example("kind: List\nitems: [{kind: [1]}]\n")  # found: TypeError (unhashable kind in a List)
@example(  # found: TypeError, a YAML date is not JSON (json.dumps in the opaque parameters' size check)
    "kind: DeviceClass\napiVersion: resource.k8s.io/v1\nmetadata: {name: c}\n"
    "spec: {config: [{opaque: {driver: d.io, parameters: {since: 2024-01-01}}}]}\n"
)
@example(  # a self-referencing alias
    "kind: DeviceClass\napiVersion: resource.k8s.io/v1\nmetadata: {name: c}\n"
    "spec: {config: [{opaque: {driver: d.io, parameters: &p {a: *p}}}]}\n"
)
@example("kind: DeviceClass\napiVersion: resource.k8s.io/v1\nmetadata: {name: !!binary aGk=}\n")
@example('kind: DeviceClass\napiVersion: resource.k8s.io/v1\nmetadata: {name: "\\ud800"}\n')
def test_any_text_loads_or_is_refused_with_a_message(text: str) -> None:
    loads_or_refuses(text)


def test_json_text_keeps_characters_outside_the_basic_plane() -> None:
    # Found by the round trip: JSON escapes U+10000 as the pair \ud800\udc00, which YAML read as two lone
    # surrogates that pydantic refused. JSON text is now read as JSON, as kubectl does.
    obj = {
        "apiVersion": API_VERSIONS[0],
        "kind": "ResourceSlice",
        "metadata": {"name": "s"},
        "spec": {
            "driver": "d.io",
            "pool": {"name": "p", "resourceSliceCount": 1},
            "nodeName": "n",
            "devices": [{"name": "a", "attributes": {"model": {"string": "\U00010000"}}}],
        },
    }
    (model,), _ = load_dra_objects(json.dumps(obj))
    reference = load_object(obj)
    assert isinstance(model, ResourceSlice) and isinstance(reference, ResourceSlice)
    assert model.spec.devices is not None and model.spec.devices == reference.spec.devices
    assert model.spec.devices[0].attributes is not None
    assert model.spec.devices[0].attributes["model"].string == "\U00010000"


YAML_LINES = [
    "---",
    "apiVersion: resource.dra-operator.io/v1",
    "apiVersion: resource.k8s.io/v1",
    "apiVersion: [v1]",
    "kind: DeviceClass",
    "kind: ResourceClaim",
    "kind: ResourceClaimTemplate",
    "kind: ResourceSlice",
    "kind: DeviceTaintRule",
    "kind: List",
    "kind: Pod",
    "kind: 7",
    "items:",
    "metadata:",
    "  name: x",
    "  name: 2024-01-01",
    "  namespace: ~",
    "spec:",
    "  devices:",
    "    requests:",
    "    - name: gpu",
    "      exactly: {deviceClassName: gpu.example.com}",
    "      exactly: &e {deviceClassName: [*e]}",
    "      firstAvailable: []",
    "  selectors:",
    "  - cel:",
    "    expression: device.driver == 'x'",
    "      expression: 'true'",
    "  driver: d.io",
    "  pool: {name: p, resourceSliceCount: 1}",
    "  allNodes: true",
    "  taint: {key: example.com/maintenance, value: planned, effect: NoExecute}",
    "  taint: {key: 'bad key', effect: Sometimes}",
    "  deviceSelector: {driver: d.io, selectors: [{cel: {expression: 'true'}}]}",
    "  devices: [{name: a, attributes: {v: {version: 1.2.3}}, capacity: {m: {value: 1Gi}}}]",
    "- &a [*a]",
    "- !!binary aGk=",
    "- !!set {a}",
    "- !!timestamp 2001-12-14",
    "  ? [complex]",
    "  : key",
    "{",
    "[",
    "'unterminated",
    "\t",
    "%YAML 1.1",
    "...",
]


@given(st.lists(st.sampled_from(YAML_LINES), max_size=16).map("\n".join))
@example("- !!timestamp 2001-12-14\n  ? [complex]")  # found (long profile): AttributeError inside PyYAML
@example("a: !!bool maybe\nb: !!int 0x\nc: !!float x")  # likewise KeyError, ValueError
def test_yaml_shaped_text_loads_or_is_refused_with_a_message(text: str) -> None:
    loads_or_refuses(text)


@given(
    st.sampled_from(DRA_KINDS + WORKLOAD_KINDS),
    st.sampled_from((*API_VERSIONS, "v1", "batch/v1")),
    st.dictionaries(
        st.sampled_from(["metadata", "spec", "status", "items", "extra"]), json_values, max_size=4
    ),
)
def test_any_json_structure_loads_or_is_refused_with_a_message(
    kind: str, api_version: str, rest: dict[str, Any]
) -> None:
    obj = {"apiVersion": api_version, "kind": kind, **rest}
    loads_or_refuses(json.dumps(obj))
    if kind in DRA_KINDS:
        try:
            model = load_object(obj)
        except InvalidObject as err:
            assert str(err) and err.kind == kind
        else:
            assert model.kind == kind


@given(corrupted(dra_object()))
def test_corrupted_objects_load_or_are_refused_with_a_message(obj: dict[str, Any]) -> None:
    loads_or_refuses(json.dumps(obj))


@given(st.lists(dra_object(), min_size=1, max_size=3))
def test_valid_objects_round_trip_through_models_and_yaml(objects: list[dict[str, Any]]) -> None:
    models = [load_object(obj) for obj in objects]
    for model, obj in zip(models, objects, strict=True):
        assert model.kind == obj["kind"] and model.name == obj["metadata"]["name"]
        dumped = model.to_dict()
        again = load_object(dumped)
        assert again == model
        assert again.to_dict() == dumped
    text = yaml.safe_dump_all([model.to_dict() for model in models])
    loaded = loads_or_refuses(text)
    assert loaded is not None
    assert loaded[0] == models and loaded[1] == []
    as_list = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    assert load_dra_objects(as_list)[0] == models


@given(st.integers(min_value=1, max_value=3 * MAX_DEPTH))
def test_nesting_is_bounded_with_a_message(depth: int) -> None:
    parameters: Any = "leaf"
    for _ in range(depth):
        parameters = {"a": parameters}
    obj = {
        "apiVersion": API_VERSIONS[0],
        "kind": "DeviceClass",
        "metadata": {"name": "c"},
        "spec": {"config": [{"opaque": {"driver": "d.io", "parameters": {"p": parameters}}}]},
    }
    text = json.dumps(obj)
    if depth + 6 <= MAX_DEPTH:  # the parameters sit 6 levels down
        assert len(load_dra_objects(text)[0]) == 1
    else:
        assert loads_or_refuses(text) is None


@given(st.integers(min_value=2, max_value=12))
def test_alias_expansion_is_bounded(fanout: int) -> None:
    # Six levels of `fanout` aliases each: a few hundred bytes of YAML, up to 3 * 10^6 values expanded.
    lines = [f"l0: &l0 [{', '.join(['1'] * fanout)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]" for i in range(1, 6)]
    text = "\n".join(["kind: Pod", *lines])
    expanded = sum(fanout**i for i in range(1, 7))
    if expanded > 1_000_000:
        assert loads_or_refuses(text) is None
    else:
        assert load_yaml_documents(text)[0]["l5"][0][0][0][0][0] == [1] * fanout


pod_claim_entry = st.fixed_dictionaries(
    {},
    optional={
        "name": label | json_values,
        "resourceClaimName": label | json_values,
        "resourceClaimTemplateName": label,
    },
)
container = st.fixed_dictionaries(
    {},
    optional={"name": label | json_values, "resources": st.just({"claims": [{"name": "a"}]}) | json_values},
)


@given(
    st.sampled_from(WORKLOAD_KINDS[:-1]),
    st.fixed_dictionaries(
        {},
        optional={
            "resourceClaims": st.lists(pod_claim_entry | json_values, max_size=3),
            "containers": st.lists(container | json_values, max_size=3),
        },
    ),
)
@example(
    "Pod", {"resourceClaims": [{"name": "a", "resourceClaimName": [], "resourceClaimTemplateName": "t"}]}
)
def test_pod_claim_check_of_any_workload_passes_or_explains(kind: str, spec: dict[str, Any]) -> None:
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "spec": spec}
    if kind != "Pod":
        obj = {"apiVersion": "apps/v1", "kind": kind, "spec": {"template": {"spec": spec}}}
        if kind == "CronJob":
            obj["spec"] = {"jobTemplate": {"spec": obj["spec"]}}
    try:
        claims = check_pod_claims(obj, source="pods.yaml")
    except InvalidObject as err:
        # Not always prefixed with the source: check_pod_claims drops it when only the model refuses (pod.py).
        assert str(err).strip() and err.problems and all(message for _, message in err.problems)
    else:
        assert len(claims) == len(spec.get("resourceClaims") or [])
