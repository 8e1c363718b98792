"""Inventory -> ResourceSlice and the pure sync plan: names, labels, generations, duplicates, no-op passes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dra_operator.agent.inventory import DeviceInfo, Inventory, Taint
from dra_operator.agent.slices import (
    DRIVER_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NODE_LABEL,
    Create,
    Delete,
    Replace,
    build_slice,
    label_value,
    node_selector,
    plan,
    slice_dict,
    slice_name,
)
from dra_operator.api.resource import ResourceSlice

NODE = "node-a"
UID = "11111111-2222-3333-4444-555555555555"
DRIVER = "driver.example.com"


def gpus(count: int, memory: str = "64Gi", driver: str = DRIVER) -> Inventory:
    return Inventory(
        driver=driver,
        devices=tuple(
            DeviceInfo(name=f"gpu-{i}", attributes={"type": "gpu", "index": i}, capacity={"memory": memory})
            for i in range(count)
        ),
    )


def stored(
    inventory: Inventory, *, generation: int = 1, rv: str = "100", node_uid: str = UID
) -> dict[str, Any]:
    """What the API server returns for a slice this agent created."""
    body = slice_dict(build_slice(NODE, inventory, generation=generation, node_uid=node_uid))
    body["metadata"].update(resourceVersion=rv, uid="slice-uid", creationTimestamp="2026-01-01T00:00:00Z")
    return body


# ------------------------------------------------------------------------------------ naming


@pytest.mark.parametrize(
    ("node", "driver"),
    [
        ("node-a", "gpu.nvidia.com"),
        ("ip-10-0-0-1.ec2.internal", "driver.example.com"),
        ("n" * 253, "gpu.nvidia.com"),
        ("node-a", "d" * 40 + ".example.com"),
    ],
)
def test_slice_names_are_deterministic_valid_and_short(node: str, driver: str) -> None:
    name = slice_name(node, driver)
    assert name == slice_name(node, driver)
    assert len(name) <= 253
    build_slice(node, gpus(1, driver=driver))  # the model accepts name and labels


def test_slice_names_differ_where_node_and_driver_split_differently() -> None:
    assert slice_name("a", "b-c.io") != slice_name("a-b", "c.io")
    assert slice_name("n" * 253, "x.io") != slice_name("n" * 252 + "m", "x.io")


@pytest.mark.parametrize(
    ("text", "same"), [("node-a", True), ("a" * 63, True), ("a" * 64, False), ("-x", False)]
)
def test_label_values(text: str, same: bool) -> None:
    value = label_value(text)
    assert (value == text) is same
    assert len(value) <= 63


def test_slice_content() -> None:
    resource_slice = build_slice(NODE, gpus(2), generation=7, node_uid=UID)
    spec = resource_slice.spec
    assert (spec.driver, spec.pool.name, spec.pool.generation, spec.pool.resource_slice_count) == (
        DRIVER,
        NODE,
        7,
        1,
    )
    assert spec.node_name == NODE
    assert [d.name for d in spec.devices or []] == ["gpu-0", "gpu-1"]
    (owner,) = resource_slice.metadata.owner_references or []
    assert (owner.api_version, owner.kind, owner.name, owner.uid) == ("v1", "Node", NODE, UID)
    labels = resource_slice.metadata.labels or {}
    assert labels == {MANAGED_BY_LABEL: MANAGED_BY, NODE_LABEL: NODE, DRIVER_LABEL: DRIVER}
    assert node_selector(NODE) == f"{MANAGED_BY_LABEL}={MANAGED_BY},{NODE_LABEL}={NODE}"


def test_attribute_types_and_taints_in_json() -> None:
    from dra_operator.agent.slices import device_json

    device = DeviceInfo(
        name="d", attributes={"s": "x", "i": 3, "b": True}, taints=(Taint(key="k.io/t", effect="NoSchedule"),)
    )
    assert device_json(device) == {
        "name": "d",
        "attributes": {"s": {"string": "x"}, "i": {"int": 3}, "b": {"bool": True}},
        "taints": [{"key": "k.io/t", "effect": "NoSchedule"}],
    }


# ------------------------------------------------------------------------------------ planning


def test_nothing_existing_creates_generation_one() -> None:
    (action,) = plan(NODE, UID, [gpus(2)], [])
    assert isinstance(action, Create)
    assert action.body["spec"]["pool"]["generation"] == 1
    assert action.name == slice_name(NODE, DRIVER)


def test_unchanged_inventory_plans_no_write() -> None:
    assert plan(NODE, UID, [gpus(2)], [stored(gpus(2), generation=5)]) == []


def test_quantity_spelling_is_not_a_change() -> None:
    assert plan(NODE, UID, [gpus(2, memory="64Gi")], [stored(gpus(2, memory="68719476736"))]) == []


@pytest.mark.parametrize(
    "changed",
    [gpus(3), gpus(1), gpus(2, memory="32Gi")],
    ids=["device added", "device withdrawn", "capacity changed"],
)
def test_changed_inventory_replaces_with_next_generation(changed: Inventory) -> None:
    (action,) = plan(NODE, UID, [changed], [stored(gpus(2), generation=4, rv="77")])
    assert isinstance(action, Replace)
    assert action.content_changed
    assert action.body["spec"]["pool"]["generation"] == 5
    assert action.body["metadata"]["resourceVersion"] == "77"
    assert len(action.body["spec"]["devices"]) == len(changed.devices)


def test_new_node_uid_updates_owner_without_new_generation() -> None:
    (action,) = plan(NODE, "new-uid", [gpus(2)], [stored(gpus(2), generation=4)])
    assert isinstance(action, Replace)
    assert not action.content_changed
    assert action.body["spec"]["pool"]["generation"] == 4
    assert action.body["metadata"]["ownerReferences"][0]["uid"] == "new-uid"


def test_foreign_labels_and_annotations_are_kept() -> None:
    existing = stored(gpus(2))
    existing["metadata"]["labels"]["team"] = "a"
    existing["metadata"]["annotations"] = {"note": "x"}
    (action,) = plan(NODE, UID, [gpus(3)], [existing])
    assert isinstance(action, Replace)
    assert action.body["metadata"]["labels"]["team"] == "a"
    assert action.body["metadata"]["annotations"] == {"note": "x"}


def test_our_missing_label_is_restored() -> None:
    existing = stored(gpus(2))
    del existing["metadata"]["labels"][DRIVER_LABEL]
    (action,) = plan(NODE, UID, [gpus(2)], [existing])
    assert isinstance(action, Replace)
    assert action.body["metadata"]["labels"][DRIVER_LABEL] == DRIVER


def test_empty_pool_and_vanished_driver_delete_their_slice() -> None:
    other = gpus(1, driver="other.example.com")
    existing = [stored(gpus(2), rv="5"), stored(other, rv="6")]
    actions = plan(NODE, UID, [Inventory(driver=DRIVER, devices=())], existing)
    assert sorted((type(a).__name__, a.name) for a in actions) == [
        ("Delete", slice_name(NODE, DRIVER)),
        ("Delete", slice_name(NODE, "other.example.com")),
    ]
    assert {a.resource_version for a in actions if isinstance(a, Delete)} == {"5", "6"}


def test_duplicates_are_deleted_and_the_named_slice_kept() -> None:
    keep = stored(gpus(2), generation=3)
    duplicate = copy.deepcopy(keep)
    duplicate["metadata"]["name"] = "some-older-name"
    actions = plan(NODE, UID, [gpus(2)], [duplicate, keep])
    assert actions == [Delete("some-older-name", "100", f"duplicate slice for {NODE}/{DRIVER}")]


def test_only_a_foreign_named_slice_is_replaced_by_ours_with_a_higher_generation() -> None:
    old = stored(gpus(2), generation=9)
    old["metadata"]["name"] = "legacy"
    actions = plan(NODE, UID, [gpus(2)], [old])
    assert [type(a) for a in actions] == [Delete, Create]
    create = actions[1]
    assert isinstance(create, Create)
    assert create.body["spec"]["pool"]["generation"] == 10


def test_slices_of_other_nodes_are_ignored() -> None:
    other = stored(gpus(2))
    other["spec"]["nodeName"] = "node-b"
    assert [type(a) for a in plan(NODE, UID, [gpus(2)], [other])] == [Create]


@pytest.mark.parametrize(
    "damage",
    [
        lambda body: body["spec"]["pool"].update(name="other-pool"),
        lambda body: body["spec"].update(devices=[{"name": "BAD NAME"}]),
    ],
    ids=["immutable pool name differs", "invalid content"],
)
def test_unusable_slice_is_recreated(damage: Any) -> None:
    existing = stored(gpus(2), generation=2)
    damage(existing)
    actions = plan(NODE, UID, [gpus(2)], [existing])
    assert [type(a) for a in actions] == [Delete, Create]
    create = actions[1]
    assert isinstance(create, Create)
    assert create.body["spec"]["pool"]["generation"] == 3
    ResourceSlice.model_validate(create.body)
