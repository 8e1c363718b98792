"""The bridge to the core allocator: dicts in, JSON allocations out, the snapshot kept across Pods."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from dra_operator.api.resource import ResourceClaim
from dra_operator.operator import allocating
from dra_operator.operator.allocating import AllocationRequest, Allocator, Failure, Placed
from dra_operator.operator.reconciler import Reconciler
from dra_operator.operator.state import (
    CLAIMS,
    CLASSES,
    INDEXES,
    NODES,
    SLICES,
    TEMPLATES,
    State,
    key_of,
)

Json = dict[str, Any]
SEED = Path(__file__).resolve().parent.parent / "fixtures" / "seed"


def load(name: str, uid: str) -> Json:
    obj: Json = yaml.safe_load((SEED / name).read_text())
    obj["metadata"].update(uid=uid, resourceVersion="1", namespace=obj["metadata"].get("namespace", "ns"))
    return obj


def slice_for(node: str, memories: list[str], rv: str = "1") -> Json:
    return {
        "apiVersion": "resource.dra-operator.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-slice", "uid": f"slice-{node}", "resourceVersion": rv},
        "spec": {
            "driver": "driver.example.com",
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": [
                {
                    "name": f"gpu-{i}",
                    "attributes": {"type": {"string": "gpu"}},
                    "capacity": {"memory": {"value": memory}},
                }
                for i, memory in enumerate(memories)
            ],
        },
    }


def node(name: str) -> Json:
    return {"metadata": {"name": name, "labels": {}}}


def claim_from_template(name: str) -> Json:
    template = load("resourceclaimtemplate.yaml", "t")
    return {
        "apiVersion": "resource.dra-operator.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": "1"},
        "spec": copy.deepcopy(template["spec"]["spec"]),
    }


def request(claims: dict[str, Json], all_claims: list[Json], slices: list[Json]) -> AllocationRequest:
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "pod"}}
    nodes = [node("n1"), node("n2")]
    return AllocationRequest(
        pod=pod,
        claims=claims,
        classes=[load("deviceclass.yaml", "class")],
        slices=slices,
        nodes=nodes,
        candidates=["n1", "n2"],
        all_claims=all_claims,
    )


def allocated(claim: Json, allocation: Json) -> Json:
    done = copy.deepcopy(claim)
    done["status"] = {
        "allocation": allocation,
        "reservedFor": [{"resource": "pods", "name": "x", "uid": "x"}],
    }
    done["metadata"]["resourceVersion"] = "2"
    return done


def test_one_64gi_gpu_per_claim_until_none_is_left_then_released() -> None:
    allocator = Allocator()
    slices = [slice_for("n1", ["64Gi", "32Gi"]), slice_for("n2", ["64Gi"])]
    written: list[Json] = []
    devices = []
    for index in range(2):
        claim = claim_from_template(f"c{index}")
        outcome = allocator.allocate(request({"gpu": claim}, written, slices))
        assert isinstance(outcome, Placed), outcome
        allocation = outcome.allocations["gpu"]
        (result,) = allocation["devices"]["results"]
        assert result["device"] == "gpu-0" and outcome.node == result["pool"]
        devices.append((outcome.node, result["device"]))
        written.append(allocated(claim, allocation))
    assert sorted(devices) == [("n1", "gpu-0"), ("n2", "gpu-0")]

    third = claim_from_template("c2")
    outcome = allocator.allocate(request({"gpu": third}, written, slices))
    assert isinstance(outcome, Failure) and outcome.reason == "AllocationFailed"
    assert "n1" in outcome.message and "n2" in outcome.message
    assert "\n" not in outcome.message and len(outcome.message) <= 1024  # one line that fits an event

    # The first claim is released (gone from the list): its device is free for the third.
    outcome = allocator.allocate(request({"gpu": third}, written[1:], slices))
    assert isinstance(outcome, Placed) and outcome.node == devices[0][0]
    assert allocator.rebuilds == 1, "claims changing must not rebuild the snapshot"

    # A node's slice changed: swapped in the kept snapshot, not rebuilt.
    slices = [slice_for("n1", ["64Gi", "64Gi"], rv="2"), slice_for("n2", ["64Gi"])]
    outcome = allocator.allocate(request({"gpu": third}, written, slices))
    assert (
        isinstance(outcome, Placed)
        and outcome.allocations["gpu"]["devices"]["results"][0]["device"] == "gpu-1"
    )
    assert (allocator.rebuilds, allocator.replacements) == (1, 1)


@pytest.mark.parametrize("swap", ["swapped", "rebuilt", "compacted"])
def test_a_republished_node_decides_as_a_rebuild_would(swap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether the changed slice is swapped in place or the snapshot rebuilt (swaps off, or too many replaced
    records held), the devices a slice no longer lists are never handed out, those it adds are, and held ones
    stay held."""
    allocator = Allocator()
    allocator.replace_slices = swap != "rebuilt"
    if swap == "compacted":
        monkeypatch.setattr(allocating, "REPLACED_RECORDS_MAX", 0)
    slices = [slice_for("n1", ["64Gi", "64Gi"]), slice_for("n2", ["32Gi"])]
    written: list[Json] = []
    first = claim_from_template("c0")
    outcome = allocator.allocate(request({"gpu": first}, written, slices))
    assert isinstance(outcome, Placed) and outcome.node == "n1"
    held = outcome.allocations["gpu"]["devices"]["results"][0]["device"]
    written.append(allocated(first, outcome.allocations["gpu"]))
    # n1 republished without its free GPU; n2 now has a 64Gi one.
    kept = [d for d in slice_for("n1", ["64Gi", "64Gi"])["spec"]["devices"] if d["name"] == held]
    n1 = slice_for("n1", [], rv="2")
    n1["spec"]["devices"] = kept
    slices = [n1, slice_for("n2", ["64Gi"], rv="2")]
    devices = []
    for index in (1, 2):
        claim = claim_from_template(f"c{index}")
        outcome = allocator.allocate(request({"gpu": claim}, written, slices))
        if isinstance(outcome, Failure):
            devices.append(None)
            continue
        result = outcome.allocations["gpu"]["devices"]["results"][0]
        devices.append((outcome.node, result["device"]))
        written.append(allocated(claim, outcome.allocations["gpu"]))
    assert devices == [("n2", "gpu-0"), None]
    # Compacted: both nodes swapped, then 3 replaced records against 2 live ones made it rebuild.
    expected = {"swapped": (1, 2), "rebuilt": (2, 0), "compacted": (2, 2)}[swap]
    assert (allocator.rebuilds, allocator.replacements) == expected


def test_with_a_device_taint_rule_a_republished_node_is_swapped_with_the_rules_taints() -> None:
    """A DeviceTaintRule tainting every gpu-1: n1 republished with a gpu-1 is swapped in with that taint, so
    the claim gets n1's untainted gpu-2 and nothing is rebuilt."""
    allocator = Allocator()
    maintenance = {
        "apiVersion": "resource.dra-operator.io/v1",
        "kind": "DeviceTaintRule",
        "metadata": {
            "name": "gpu-1-maintenance",
            "uid": "rule",
            "resourceVersion": "1",
            "creationTimestamp": "2026-12-01T00:00:00Z",
        },
        "spec": {
            "deviceSelector": {"device": "gpu-1"},
            "taint": {"key": "example.com/maintenance", "effect": "NoSchedule"},
        },
    }
    slices = [slice_for("n1", ["64Gi"]), slice_for("n2", ["32Gi"])]
    first = dataclasses.replace(
        request({"gpu": claim_from_template("c0")}, [], slices), taint_rules=[maintenance]
    )
    outcome = allocator.allocate(first)
    assert isinstance(outcome, Placed) and outcome.node == "n1"
    written = [allocated(claim_from_template("c0"), outcome.allocations["gpu"])]
    slices = [slice_for("n1", ["64Gi", "64Gi", "64Gi"], rv="2"), slices[1]]
    again = dataclasses.replace(
        request({"gpu": claim_from_template("c1")}, written, slices), taint_rules=[maintenance]
    )
    outcome = allocator.allocate(again)
    assert isinstance(outcome, Placed), outcome
    assert (outcome.node, outcome.allocations["gpu"]["devices"]["results"][0]["device"]) == ("n1", "gpu-2")
    assert (allocator.rebuilds, allocator.replacements) == (1, 1)


def test_a_node_label_change_rebuilds_the_snapshot_and_a_heartbeat_does_not() -> None:
    allocator = Allocator()
    slices = [slice_for("n1", ["64Gi"]), slice_for("n2", ["64Gi"])]
    first = request({"gpu": claim_from_template("c0")}, [], slices)
    assert isinstance(allocator.allocate(first), Placed) and allocator.rebuilds == 1
    nodes = copy.deepcopy(first.nodes)
    nodes[0]["metadata"]["resourceVersion"] = "99"  # a status heartbeat: same name, same labels
    nodes[0].setdefault("status", {})["conditions"] = [{"type": "Ready", "status": "True"}]
    again = dataclasses.replace(first, nodes=nodes)
    assert isinstance(allocator.allocate(again), Placed) and allocator.rebuilds == 1
    # A label that a node selector may read changes the nodes the snapshot knows.
    nodes = copy.deepcopy(nodes)
    nodes[0]["metadata"].setdefault("labels", {})["zone"] = "a"
    relabelled = dataclasses.replace(first, nodes=nodes)
    assert isinstance(allocator.allocate(relabelled), Placed) and allocator.rebuilds == 2
    snapshot = allocator._snapshot
    assert snapshot is not None and snapshot.nodes[0].labels.get("zone") == "a"
    assert snapshot.nodes[0].labels is nodes[0]["metadata"]["labels"]  # the cached object's map, no copy


def test_missing_class_and_invalid_claim() -> None:
    allocator = Allocator()
    claim = claim_from_template("c")
    claim["spec"]["devices"]["requests"][0]["exactly"]["deviceClassName"] = "nope"
    outcome = allocator.allocate(request({"gpu": claim}, [], [slice_for("n1", ["64Gi"])]))
    assert isinstance(outcome, Failure) and outcome.reason == "ClassNotFound"
    broken = claim_from_template("b")
    broken["spec"]["devices"]["requests"][0]["exactly"]["selectors"] = [{"cel": None, "expression": "true"}]
    outcome = allocator.allocate(request({"gpu": broken}, [], [slice_for("n1", ["64Gi"])]))
    assert isinstance(outcome, Failure) and outcome.reason == "InvalidClaim"


def test_gpu_uuids_come_from_the_nvml_driver_slices() -> None:
    allocator = Allocator(nvidia_driver="driver.example.com")
    gpu_slice = slice_for("n1", ["64Gi"])
    gpu_slice["spec"]["devices"][0]["attributes"]["uuid"] = {"string": "GPU-1234"}
    outcome = allocator.allocate(request({"gpu": claim_from_template("c")}, [], [gpu_slice]))
    assert isinstance(outcome, Placed)
    assert outcome.gpu_uuids == {("driver.example.com", "n1", "gpu-0"): "GPU-1234"}


def test_runtime_selector_error_is_invalid_selector() -> None:
    allocator = Allocator()
    claim = claim_from_template("c")
    selector = claim["spec"]["devices"]["requests"][0]["exactly"]["selectors"][0]["cel"]
    selector["expression"] = 'device.attributes["driver.example.com"].missing == "x"'
    outcome = allocator.allocate(request({"gpu": claim}, [], [slice_for("n1", ["64Gi"])]))
    assert isinstance(outcome, Failure) and outcome.reason == "InvalidSelector", outcome
    assert "missing" in outcome.message


def test_a_slice_status_write_neither_rebuilds_the_snapshot_nor_evaluates_cel_again() -> None:
    """The operator writes each slice's device counts into its status (the free-devices view): a new
    resourceVersion, the same metadata.generation. Only a spec change (a new generation) rebuilds."""
    allocator = Allocator()
    slices = [slice_for("n1", ["64Gi", "64Gi"]), slice_for("n2", ["64Gi"])]
    for obj in slices:
        obj["metadata"]["generation"] = 1
    claim = claim_from_template("c0")
    assert isinstance(allocator.allocate(request({"gpu": claim}, [], slices)), Placed)
    evaluations = allocator.selectors.evaluations
    assert (allocator.rebuilds, evaluations) == (1, 6)  # 3 devices x (class selector, request selector)

    counted = copy.deepcopy(slices)
    for obj in counted:
        obj["metadata"]["resourceVersion"] = "9"
        obj["status"] = {"devices": 2, "allocated": 0, "tainted": 0, "free": 2}
    assert isinstance(allocator.allocate(request({"gpu": claim_from_template("c1")}, [], counted)), Placed)
    assert (allocator.rebuilds, allocator.selectors.evaluations) == (1, evaluations)

    changed = copy.deepcopy(counted)
    changed[0]["metadata"]["generation"] = 2
    changed[0]["spec"]["devices"].pop()
    assert isinstance(allocator.allocate(request({"gpu": claim_from_template("c2")}, [], changed)), Placed)
    assert (allocator.rebuilds, allocator.replacements) == (1, 1)
    assert allocator.selectors.evaluations == evaluations + 2, "only the changed slice's device again"


def test_parsed_models_are_kept_one_per_object_and_a_claims_allocation_goes_with_its_claim() -> None:
    """A slice's status write reuses its model (same generation), a new generation replaces it: the cache
    holds one model per live object, not one per version. Of a claim only its parsed allocation is kept, until
    the claim is gone."""
    allocator = Allocator()
    slices = [slice_for("n1", ["64Gi", "64Gi"])]
    slices[0]["metadata"]["generation"] = 1
    first = allocator.slice_models(slices)[0]
    counted = copy.deepcopy(slices)
    counted[0]["metadata"]["resourceVersion"] = "9"
    assert allocator.slice_models(counted)[0] is first
    changed = copy.deepcopy(counted)
    changed[0]["metadata"]["generation"] = 2
    assert allocator.slice_models(changed)[0] is not first
    assert len(allocator._models) == 1

    claim = claim_from_template("c0")
    placed = allocator.allocate(request({"gpu": claim}, [], changed))
    assert isinstance(placed, Placed)
    held = allocated(claim, placed.allocations["gpu"])
    allocator.allocate(request({"gpu": claim_from_template("c1")}, [held], changed))
    key = (claim["metadata"]["namespace"], claim["metadata"]["name"])
    assert list(allocator._allocations) == [key]
    assert not [m for _, m in allocator._models.values() if isinstance(m, ResourceClaim)], "no claim's model"
    allocator.allocate(request({"gpu": claim_from_template("c2")}, [], changed))  # c0 is gone
    assert not allocator._allocations


def test_a_standbys_warm_up_leaves_the_first_decision_nothing_to_evaluate() -> None:
    """Reconciler.warm (a standby's trial allocation from each template, never written) builds the snapshot
    and evaluates every device's selectors: the new leader's first Pod then evaluates no CEL at all."""
    indexes: dict[str, dict[Any, list[Json]]] = {name: {} for name in INDEXES}
    template = load("resourceclaimtemplate.yaml", "template")
    device_class = load("deviceclass.yaml", "class")
    del device_class["metadata"]["namespace"]  # cluster-scoped
    for kind, obj in [
        (CLASSES, device_class),
        (TEMPLATES, template),
        (NODES, node("n1")),
        (NODES, node("n2")),
        (SLICES, slice_for("n1", ["64Gi", "64Gi"])),
        (SLICES, slice_for("n2", ["64Gi"])),
    ]:
        indexes[kind][key_of(obj)] = [obj]
    state = State()
    state.bind(indexes)
    allocator = Allocator()
    reconciler = Reconciler(None, state, None, allocator)  # type: ignore[arg-type]

    assert reconciler.warm() == 1
    assert allocator.selectors.evaluations == 6  # 3 devices x (class selector, request selector)
    assert state.all(CLAIMS) is not None and list(state.all(CLAIMS)) == [], "nothing written or kept"

    pod = {"metadata": {"name": "p", "namespace": template["metadata"]["namespace"], "uid": "pod"}}
    claim = claim_from_template("c0")
    claim["metadata"]["namespace"] = template["metadata"]["namespace"]
    first = reconciler._request(pod, {"gpu": claim})
    assert first is not None
    assert isinstance(allocator.allocate(first), Placed)
    assert (allocator.selectors.evaluations, allocator.rebuilds) == (6, 1)
