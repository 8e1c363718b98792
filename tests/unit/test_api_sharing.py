"""Parsed devices share their equal attribute and capacity values and maps (api.sharing), and nothing else
about parsing changes: the same JSON back, the same errors, nothing kept after the last device is gone."""

from __future__ import annotations

import copy
import gc
import json
import pickle
import sys
import tracemalloc
from typing import Any

import pytest
from pydantic import ValidationError

from dra_operator.api import resource as resource_module
from dra_operator.api.resource import Device, DeviceAttribute, DeviceCapacity, ObjectMeta, ResourceSlice
from dra_operator.api.sharing import SharedMap, copy_on_write_tree, shared_tree
from dra_operator.controlplane.fakes import gpu_slice_manifest


def gpu(name: str, **attributes: Any) -> dict[str, Any]:
    return {
        "name": name,
        "attributes": {key: value for key, value in attributes.items()},
        "capacity": {"memory": {"value": "64Gi"}},
    }


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ({"string": "gpu"}, {"string": "gpu"}, True),
        ({"string": "gpu"}, {"string": "GPU"}, False),
        ({"int": 1}, {"int": 1}, True),
        ({"int": 1}, {"bool": True}, False),  # equal in Python, not in JSON
        ({"version": "1.2.3"}, {"version": "1.2.3"}, True),
        ({"version": "1.2.3"}, {"string": "1.2.3"}, False),
    ],
)
def test_equal_attribute_values_are_one_object(
    first: dict[str, Any], second: dict[str, Any], same: bool
) -> None:
    a, b = DeviceAttribute.model_validate(first), DeviceAttribute.model_validate(second)
    assert (a is b) == same
    assert a.to_dict() == first and b.to_dict() == second


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ({"value": "64Gi"}, {"value": "64Gi"}, True),
        ({"value": "64Gi"}, {"value": "65536Mi"}, False),  # equal quantities, written differently
        ({"value": "8"}, {"value": 8}, False),
    ],
)
def test_equal_capacities_are_one_object(first: dict[str, Any], second: dict[str, Any], same: bool) -> None:
    a, b = DeviceCapacity.model_validate(first), DeviceCapacity.model_validate(second)
    assert (a is b) == same
    assert a.to_dict() == {"value": str(first["value"])}


def test_a_capacity_with_a_request_policy_is_parsed_apart() -> None:
    data = {"value": "64Gi", "requestPolicy": {"default": "1Gi"}}
    assert DeviceCapacity.model_validate(data) is not DeviceCapacity.model_validate(data)


@pytest.mark.parametrize(
    "bad",
    [{"int": True}, {"string": "x" * 65}, {"version": "one"}, {"int": 2**63}, {"string": 3}],
)
def test_invalid_values_fail_every_time(bad: dict[str, Any]) -> None:
    for _ in range(2):  # a failure is not remembered as a value
        with pytest.raises(ValidationError):
            DeviceAttribute.model_validate(bad)


def test_devices_with_equal_maps_share_them_and_different_ones_do_not() -> None:
    a = Device.model_validate(gpu("gpu-0", type={"string": "gpu"}, index={"int": 0}))
    b = Device.model_validate(gpu("gpu-1", type={"string": "gpu"}, index={"int": 0}))
    c = Device.model_validate(gpu("gpu-2", type={"string": "gpu"}, index={"int": 1}))
    assert a.attributes is b.attributes and a.capacity is b.capacity
    assert c.attributes is not a.attributes
    assert c.attributes is not None and a.attributes is not None
    assert c.attributes["type"] is a.attributes["type"]


def test_a_shared_map_refuses_writes_and_survives_copies() -> None:
    device = Device.model_validate(gpu("gpu-0", type={"string": "gpu"}))
    attributes = device.attributes
    assert isinstance(attributes, SharedMap)
    for write in (
        lambda: attributes.__setitem__("x", attributes["type"]),
        lambda: attributes.update(x=attributes["type"]),
        lambda: attributes.pop("type"),
        attributes.clear,
    ):
        with pytest.raises(TypeError, match="read-only"):
            write()
    assert copy.deepcopy(device) == device
    assert pickle.loads(pickle.dumps(device)) == device
    assert device.model_copy(deep=True).to_dict() == device.to_dict()


def test_parsed_slices_are_the_same_json_as_before() -> None:
    manifest = gpu_slice_manifest("node-a", {f"gpu-{i}": "64Gi" for i in range(4)})
    manifest["spec"]["devices"][1]["attributes"]["index"] = {"int": 1}
    first, second = ResourceSlice.model_validate(manifest), ResourceSlice.model_validate(manifest)
    assert first.to_dict() == second.to_dict()
    assert first.to_dict()["spec"]["devices"] == manifest["spec"]["devices"]


def test_models_given_the_same_fields_share_one_set_of_their_names() -> None:
    first, second = (Device.model_validate(gpu(f"gpu-{i}", index={"int": i})) for i in range(2))
    bare = Device.model_validate({"name": "gpu-2"})
    assert first.model_fields_set is second.model_fields_set == {"name", "attributes", "capacity"}
    assert bare.model_fields_set == {"name"} and bare.model_fields_set is not first.model_fields_set
    # A copy gets a set of its own, and what the dumps say is untouched by the sharing.
    assert first.model_copy().model_fields_set is not first.model_fields_set
    assert bare.to_dict() == {"name": "gpu-2"}
    meta = [
        ResourceSlice.model_validate(gpu_slice_manifest(f"n-{i}", {"gpu": "1Gi"})).metadata for i in range(2)
    ]
    assert meta[0].model_fields_set is meta[1].model_fields_set
    # Setting a field not given moves that model to another set; the shared one stays as it was.
    given = set(meta[1].model_fields_set)
    meta[0].namespace = "team-a"
    assert meta[0].model_fields_set == given | {"namespace"} and meta[1].model_fields_set == given
    assert meta[0].namespace == "team-a" and meta[1].namespace is None


def test_a_slices_devices_are_compacted_and_behave_as_parsed() -> None:
    manifest = gpu_slice_manifest("node-a", {f"gpu-{i}": "64Gi" for i in range(2)})
    parsed = ResourceSlice.model_validate(manifest)
    devices = parsed.spec.devices or []
    plain = [Device.model_validate(d) for d in manifest["spec"]["devices"]]
    # The same fields, values and dumps, in dicts of the key-sharing kind (smaller than pydantic's own).
    assert devices == plain and [d.to_dict() for d in devices] == manifest["spec"]["devices"]
    assert sys.getsizeof(devices[0].__dict__) < sys.getsizeof(plain[0].__dict__)
    assert devices[0].model_fields_set is plain[0].model_fields_set
    # So is the slice's metadata, kept with it.
    meta = ObjectMeta.model_validate(manifest["metadata"])
    assert parsed.metadata == meta and sys.getsizeof(parsed.metadata.__dict__) < sys.getsizeof(meta.__dict__)
    assert parsed.to_dict()["metadata"] == manifest["metadata"]
    # Writes, copies and a slice built in code keep working.
    devices[0].all_nodes = False
    assert devices[0].model_fields_set == {"name", "attributes", "capacity", "all_nodes"}
    assert devices[1].all_nodes is None and plain[0].model_fields_set == {"name", "attributes", "capacity"}
    assert copy.deepcopy(devices[1]) == devices[1] == devices[1].model_copy()
    assert pickle.loads(pickle.dumps(parsed)) == parsed
    built = ResourceSlice(metadata=parsed.metadata, spec=parsed.spec.model_copy(update={"devices": plain}))
    assert built.to_dict()["spec"]["devices"][1] == manifest["spec"]["devices"][1]


def test_nothing_is_kept_after_the_last_device_is_gone() -> None:
    gc.collect()
    held = len(resource_module._ATTRIBUTES), len(resource_module._CAPACITIES)
    devices = [Device.model_validate(gpu(f"gpu-{i}", uuid={"string": f"GPU-{i}"})) for i in range(100)]
    assert len(resource_module._ATTRIBUTES) >= held[0] + 100
    del devices
    gc.collect()
    assert (len(resource_module._ATTRIBUTES), len(resource_module._CAPACITIES)) <= held


def test_slices_of_repeated_devices_take_a_quarter_of_their_unshared_size() -> None:
    # 500 slices of 8 equal GPUs: 19.6 KiB per slice parsed apart, 8.8 KiB shared (measured by RSS at 5,000
    # slices, issue 14); 3.5 KiB with the devices compacted, as tracemalloc counts Python's allocations,
    # which these models all are.
    manifests = [
        gpu_slice_manifest(f"node-{i}", {f"gpu-{j}": "64Gi" for j in range(8)}, name=f"s-{i}")
        for i in range(500)
    ]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        models = [ResourceSlice.model_validate(m) for m in manifests]
        per_slice = (tracemalloc.get_traced_memory()[0] - before) / len(models) / 1024
    finally:
        tracemalloc.stop()
    assert per_slice < 5, f"{per_slice:.1f} KiB per parsed slice"


def test_equal_trees_are_one_read_only_object_all_the_way_down() -> None:
    spec = {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu", "count": 1}}]}}
    reordered = {
        "devices": {"requests": [{"exactly": {"count": 1, "deviceClassName": "gpu"}, "name": "gpu"}]}
    }
    first, second = shared_tree(spec), shared_tree(json.loads(json.dumps(reordered)))
    assert first is second and first == spec
    assert shared_tree({"devices": {"requests": []}}) is not first
    requests = first["devices"]["requests"]
    assert isinstance(requests, list) and isinstance(first, dict)  # readers' type checks still hold
    for write in (
        lambda: requests.append({}),
        lambda: requests.__setitem__(0, {}),
        lambda: requests[0]["exactly"].__setitem__("count", 2),
        lambda: first.__setitem__("devices", {}),
    ):
        with pytest.raises(TypeError, match="read-only"):
            write()
    assert copy.deepcopy(first) is first and pickle.loads(pickle.dumps(first)) == spec
    assert json.loads(json.dumps(first)) == spec
    assert shared_tree("not an object") == "not an object" and shared_tree(None) is None


def test_a_copy_on_write_tree_is_shared_read_only_and_its_copies_are_plain() -> None:
    # A waiting claim's status: equal ones are one object, never changed in place; the operator writes a
    # new status from a copy, which must be plain JSON all the way down.
    status = {
        "state": "pending",
        "conditions": [{"type": "Allocated", "status": "False", "reason": "Pending"}],
    }
    first, second = copy_on_write_tree(status), copy_on_write_tree(json.loads(json.dumps(status)))
    assert first is second and first == status and shared_tree(status) is not first
    conditions = first["conditions"]
    for write in (
        lambda: conditions.append({}),
        lambda: conditions[0].__setitem__("status", "True"),
        lambda: first.__setitem__("state", "allocated"),
        lambda: first.setdefault("reservedFor", []),
    ):
        with pytest.raises(TypeError, match="read-only"):
            write()
    for made in (copy.deepcopy(first), copy.copy(first), pickle.loads(pickle.dumps(first))):
        assert made == status and type(made) is dict
        assert type(made["conditions"]) is list and type(made["conditions"][0]) is dict
        made["conditions"][0]["status"] = "True"
        made["state"] = "allocated"
    assert first == status, "changing a copy left the shared tree as it was"
    assert json.loads(json.dumps(first)) == status
    assert copy_on_write_tree(None) is None


def test_a_tree_leaves_with_its_last_holder() -> None:
    from dra_operator.api import sharing

    gc.collect()
    held = len(sharing.TREES)
    trees = [shared_tree({"n": i}) for i in range(50)]
    assert len(sharing.TREES) == held + 50
    del trees
    gc.collect()
    assert len(sharing.TREES) == held
