"""The allocator's core in Python: snapshot pools, incremental use, search behaviour, explanations."""

from __future__ import annotations

from typing import Any

import pytest

from dra_operator.allocation import (
    Allocation,
    Node,
    PodRef,
    SelectorCache,
    Snapshot,
    SnapshotKeeper,
    Unallocatable,
    allocate,
)
from dra_operator.allocation.explain import (
    DevicesContended,
    InvalidPools,
    PoolNotReady,
    RequestUnsatisfiable,
    SelectorError,
)
from dra_operator.allocation.nodes import selector_matches
from dra_operator.api.resource import DeviceClass, NodeSelector, ResourceClaim, ResourceSlice

DRIVER = "driver.example.com"
POD = PodRef("default", "pod", "uid-1")


def device_class(name: str = "gpu", *expressions: str) -> DeviceClass:
    selectors = [{"cel": {"expression": e}} for e in expressions or (f'device.driver == "{DRIVER}"',)]
    return DeviceClass.model_validate({"metadata": {"name": name}, "spec": {"selectors": selectors}})


def node_slice(node: str, devices: list[dict[str, Any]], **pool: Any) -> ResourceSlice:
    name = pool.pop("slice", f"{node}-{pool.get('name', node)}")
    spec = {
        "driver": pool.pop("driver", DRIVER),
        "nodeName": node,
        "pool": {"name": node, "generation": 0, "resourceSliceCount": 1, **pool},
        "devices": devices,
    }
    return ResourceSlice.model_validate({"metadata": {"name": name}, "spec": spec})


def gpus(*names: str, **attributes: Any) -> list[dict[str, Any]]:
    attrs = {k: ({"int": v} if isinstance(v, int) else {"string": v}) for k, v in attributes.items()}
    return [{"name": n, "attributes": dict(attrs)} for n in names]


def claim(
    name: str, *requests: dict[str, Any], constraints: list[Any] | None = None, **meta: Any
) -> ResourceClaim:
    devices: dict[str, Any] = {"requests": list(requests)}
    if constraints:
        devices["constraints"] = constraints
    return ResourceClaim.model_validate(
        {"metadata": {"name": name, "namespace": "default", **meta}, "spec": {"devices": devices}}
    )


def exactly(name: str, count: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "exactly": {"deviceClassName": extra.pop("device_class", "gpu"), "count": count, **extra},
    }


def devices_of(outcome: Allocation, name: str) -> list[str]:
    result = outcome.results[("default", name)]
    return [f"{r.pool}/{r.device}" for r in result.devices.results or []]


# ------------------------------------------------------------------------------------------------ pools


def test_newer_generation_elsewhere_drops_an_incomplete_old_pool() -> None:
    # Generation 1 has two slices (only one for node-a, so it looks incomplete from there); generation 2
    # exists on another node: the old generation is obsolete and its devices are not offered on node-a.
    old = node_slice("node-a", gpus("old-0"), name="p", resourceSliceCount=2, generation=1, slice="p-old")
    new = ResourceSlice.model_validate(
        {
            "metadata": {"name": "p-new"},
            "spec": {
                "driver": DRIVER,
                "nodeName": "node-b",
                "pool": {"name": "p", "generation": 2, "resourceSliceCount": 1},
                "devices": gpus("new-0"),
            },
        }
    )
    snapshot = Snapshot.build([device_class()], [old, new])
    assert [p.label for p in snapshot.view(Node("node-a")).pools] == []
    assert [p.devices for p in snapshot.view(Node("node-b")).pools] == [(1,)]


def test_duplicate_device_names_make_the_pool_invalid_but_not_fatal_for_exact_count() -> None:
    bad = [
        node_slice("node-a", gpus("gpu-0"), slice="a1", resourceSliceCount=2),
        node_slice("node-a", gpus("gpu-0"), slice="a2", resourceSliceCount=2),
    ]
    good = node_slice("node-b", gpus("gpu-0"))
    snapshot = Snapshot.build([device_class()], [*bad, good])
    outcome = allocate(snapshot, POD, [claim("c", exactly("gpu"))])
    assert isinstance(outcome, Allocation) and outcome.node_name == "node-b"

    only_bad = Snapshot.build([device_class()], bad)
    failed = allocate(only_bad, POD, [claim("c", exactly("gpu"))])
    assert isinstance(failed, Unallocatable)
    assert any(isinstance(r, (InvalidPools, RequestUnsatisfiable)) for r in failed.explanation.reasons)
    # The node's own pool is named node-neutrally (its name is the node's here), by its driver.
    assert "pools: the node's own driver.example.com pool" in failed.explanation.render()

    all_claim = claim("c", {"name": "all", "exactly": {"deviceClassName": "gpu", "allocationMode": "All"}})
    fatal = allocate(only_bad, POD, [all_claim])
    assert isinstance(fatal, Unallocatable) and isinstance(fatal.explanation.fatal, PoolNotReady)
    assert "currently invalid" in fatal.explanation.render()


# ------------------------------------------------------------------------------------------ node selectors


@pytest.mark.parametrize(
    ("requirement", "labels", "matches"),
    [
        ({"key": "rack", "operator": "In", "values": ["r1"]}, {"rack": "r1"}, True),
        ({"key": "rack", "operator": "In", "values": ["r1"]}, {}, False),
        ({"key": "rack", "operator": "NotIn", "values": ["r1"]}, {}, True),
        ({"key": "rack", "operator": "NotIn", "values": ["r1"]}, {"rack": "r1"}, False),
        ({"key": "gpu", "operator": "Exists"}, {"gpu": ""}, True),
        ({"key": "gpu", "operator": "DoesNotExist"}, {"gpu": ""}, False),
        ({"key": "cores", "operator": "Gt", "values": ["8"]}, {"cores": "16"}, True),
        ({"key": "cores", "operator": "Lt", "values": ["8"]}, {"cores": "16"}, False),
        ({"key": "cores", "operator": "Gt", "values": ["8"]}, {"cores": "many"}, False),
    ],
)
def test_node_selector_expressions(
    requirement: dict[str, Any], labels: dict[str, str], matches: bool
) -> None:
    selector = NodeSelector.model_validate({"nodeSelectorTerms": [{"matchExpressions": [requirement]}]})
    assert selector_matches(selector, Node("n", labels)) is matches


def test_node_selector_fields_terms_and_empty_term() -> None:
    by_name = NodeSelector.model_validate(
        {
            "nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}
            ]
        }
    )
    assert not selector_matches(by_name, Node("a"))
    assert selector_matches(by_name, Node("b"))
    either = NodeSelector.model_validate(
        {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "x", "operator": "Exists"}]},
                {"matchExpressions": [{"key": "y", "operator": "Exists"}]},
            ]
        }
    )
    assert selector_matches(either, Node("n", {"y": "1"}))
    assert not selector_matches(
        NodeSelector.model_validate({"nodeSelectorTerms": [{}]}), Node("n", {"y": "1"})
    )


# ------------------------------------------------------------------------------------- incremental use


def test_pod_after_pod_fills_nodes_in_order_and_release_frees_devices() -> None:
    slices = [node_slice(f"node-{i}", gpus("gpu-0", "gpu-1")) for i in range(3)]
    snapshot = Snapshot.build([device_class()], slices)
    placed = []
    for index in range(6):
        outcome = allocate(snapshot, PodRef("default", f"p{index}"), [claim(f"c{index}", exactly("gpu"))])
        assert isinstance(outcome, Allocation)
        outcome.commit(snapshot)
        placed.append((outcome.node_name, devices_of(outcome, f"c{index}")))
    assert placed == [
        ("node-0", ["node-0/gpu-0"]),
        ("node-0", ["node-0/gpu-1"]),
        ("node-1", ["node-1/gpu-0"]),
        ("node-1", ["node-1/gpu-1"]),
        ("node-2", ["node-2/gpu-0"]),
        ("node-2", ["node-2/gpu-1"]),
    ]
    full = allocate(snapshot, PodRef("default", "late"), [claim("late", exactly("gpu"))])
    assert isinstance(full, Unallocatable)
    snapshot.release(("default", "c1"))
    again = allocate(snapshot, PodRef("default", "late"), [claim("late", exactly("gpu"))])
    assert isinstance(again, Allocation) and devices_of(again, "late") == ["node-0/gpu-1"]


def test_admin_access_results_do_not_make_devices_in_use() -> None:
    snapshot = Snapshot.build([device_class()], [node_slice("n", gpus("gpu-0"))])
    admin = allocate(snapshot, POD, [claim("watch", exactly("gpu", adminAccess=True))])
    assert isinstance(admin, Allocation)
    assert admin.results[("default", "watch")].devices.results[0].admin_access is True
    admin.commit(snapshot)
    user = allocate(snapshot, POD, [claim("use", exactly("gpu"))])
    assert isinstance(user, Allocation) and devices_of(user, "use") == ["n/gpu-0"]
    user.commit(snapshot)
    # ... while an adminAccess request may still take a device in use.
    second_admin = allocate(snapshot, POD, [claim("watch2", exactly("gpu", adminAccess=True))])
    assert isinstance(second_admin, Allocation)


def test_selector_results_are_cached_across_pods_and_snapshots() -> None:
    cache = SelectorCache()
    slices = [
        ResourceSlice.model_validate(
            {
                **node_slice(f"n{i}", gpus("gpu-0", "gpu-1", type="gpu")).to_dict(),
                "metadata": {"name": f"n{i}", "uid": f"u{i}", "resourceVersion": "7"},
            }
        )
        for i in range(4)
    ]
    request = exactly(
        "gpu", selectors=[{"cel": {"expression": f'device.attributes["{DRIVER}"].type == "gpu"'}}]
    )
    snapshot = Snapshot.build([device_class()], slices, cache=cache)
    first = allocate(snapshot, POD, [claim("c0", request)])
    assert isinstance(first, Allocation)
    evaluations = cache.evaluations
    assert 0 < evaluations <= 2 * 8  # two expressions, eight devices at most
    first.commit(snapshot)
    for index in range(1, 7):
        outcome = allocate(snapshot, POD, [claim(f"c{index}", request)])
        assert isinstance(outcome, Allocation)
        outcome.commit(snapshot)
    rebuilt = Snapshot.build([device_class()], slices, cache=cache)
    assert isinstance(allocate(rebuilt, POD, [claim("again", request)]), Allocation)
    assert cache.evaluations == evaluations


# ------------------------------------------------------------------------------------------ the search


def test_identical_devices_failing_a_constraint_do_not_blow_up_the_search() -> None:
    # 60 devices on NUMA node 0 come first, 5 on NUMA node 1 last. "four" takes four devices, then "pinned"
    # needs one more with NUMA 1 and the same NUMA value as the four. Without pruning, the search would try
    # every ordered choice of four NUMA-0 devices (about 11.7 million); with it, each equivalent device is
    # tried once per level.
    devices = gpus(*(f"a{i}" for i in range(60)), numa=0) + gpus(*(f"b{i}" for i in range(5)), numa=1)
    snapshot = Snapshot.build([device_class()], [node_slice("n", devices)])
    constraint = [{"matchAttribute": f"{DRIVER}/numa"}]
    pinned = exactly(
        "pinned", selectors=[{"cel": {"expression": f'device.attributes["{DRIVER}"].numa == 1'}}]
    )
    outcome = allocate(snapshot, POD, [claim("c", exactly("four", 4), pinned, constraints=constraint)])
    assert isinstance(outcome, Allocation)
    assert devices_of(outcome, "c") == ["n/b0", "n/b1", "n/b2", "n/b3", "n/b4"]
    assert snapshot.search_steps < 2_000


def test_unsatisfiable_constraint_over_many_identical_devices_fails_fast() -> None:
    devices = gpus(*(f"a{i}" for i in range(40)), numa=0) + gpus("b0", numa=1)
    snapshot = Snapshot.build([device_class()], [node_slice("n", devices)])
    constraint = [{"matchAttribute": f"{DRIVER}/numa", "requests": ["pinned", "rest"]}]
    pinned = exactly(
        "pinned", selectors=[{"cel": {"expression": f'device.attributes["{DRIVER}"].numa == 1'}}]
    )
    outcome = allocate(snapshot, POD, [claim("c", exactly("rest", 3), pinned, constraints=constraint)])
    assert isinstance(outcome, Unallocatable)
    assert snapshot.search_steps < 2_000


def test_seed_job_conflict_is_explained_as_contention() -> None:
    snapshot = Snapshot.build([device_class()], [node_slice("n", gpus("gpu-0", "gpu-1"))])
    template_claim = claim("job-0-gpu", exactly("gpu-claim"))
    all_claim = claim(
        "shared", {"name": "all", "exactly": {"deviceClassName": "gpu", "allocationMode": "All"}}
    )
    outcome = allocate(snapshot, POD, [template_claim, all_claim])
    assert isinstance(outcome, Unallocatable)
    (reason,) = outcome.explanation.nodes[0].reasons
    assert isinstance(reason, DevicesContended)
    assert [m[:2] for m in reason.members] == [("default/job-0-gpu", "gpu-claim"), ("default/shared", "all")]
    assert reason.available.total == 2
    assert "together they need 3 distinct devices, only 2 match on this node (gpu-0, gpu-1)" in (
        outcome.explanation.render()
    )


def test_summary_fits_an_event_message() -> None:
    slices = [node_slice(f"node-{i:03}", gpus("gpu-0")) for i in range(60)]
    snapshot = Snapshot.build([device_class()], slices)
    outcome = allocate(snapshot, POD, [claim("c", exactly("gpu", 2))])
    assert isinstance(outcome, Unallocatable)
    assert outcome.explanation.nodes_total == 60
    assert len(outcome.explanation.summary()) <= 1024
    assert "more node(s) not shown" in outcome.explanation.render()


def test_pod_without_new_claims_joins_the_node_of_its_allocated_claim() -> None:
    snapshot = Snapshot.build([device_class()], [node_slice("a", gpus("g")), node_slice("b", gpus("g"))])
    first = allocate(snapshot, POD, [claim("shared", exactly("gpu"))])
    assert isinstance(first, Allocation)
    first.commit(snapshot)
    status = {"allocation": first.results[("default", "shared")].to_dict()}
    allocated = ResourceClaim.model_validate({**claim("shared", exactly("gpu")).to_dict(), "status": status})
    joined = allocate(snapshot, PodRef("default", "other"), [allocated])
    assert isinstance(joined, Allocation)
    assert joined.node_name == "a" and joined.results == {} and joined.reused == (("default", "shared"),)


# ---------------------------------------------------------------------------------------------- keeper


def versioned(slice_: ResourceSlice, version: str) -> ResourceSlice:
    meta = {"name": slice_.name, "uid": f"uid-{slice_.name}", "resourceVersion": version}
    return ResourceSlice.model_validate({**slice_.to_dict(), "metadata": meta})


def test_keeper_rebuilds_only_when_slices_change_and_holds_assumed_allocations() -> None:
    keeper = SnapshotKeeper()
    classes = [device_class()]
    slices = [versioned(node_slice("n", gpus("gpu-0", "gpu-1")), "1")]
    snapshot = keeper.snapshot(classes, slices, None, [])
    first = allocate(snapshot, PodRef("default", "a"), [claim("a", exactly("gpu"))])
    assert isinstance(first, Allocation) and devices_of(first, "a") == ["n/gpu-0"]
    keeper.assume(first)

    # The watch has not delivered the write yet: the claim still looks pending, its device stays in use.
    pending_a = claim("a", exactly("gpu"))
    snapshot = keeper.snapshot(classes, slices, None, [pending_a])
    second = allocate(snapshot, PodRef("default", "b"), [claim("b", exactly("gpu"))])
    assert isinstance(second, Allocation) and devices_of(second, "b") == ["n/gpu-1"]
    keeper.assume(second)
    assert keeper.rebuilds == 1

    # The writes are visible; then claim a is deallocated: gpu-0 is free again.
    written = [
        ResourceClaim.model_validate(
            {
                **claim(name, exactly("gpu")).to_dict(),
                "status": {"allocation": outcome.results[("default", name)].to_dict()},
            }
        )
        for name, outcome in (("a", first), ("b", second))
    ]
    snapshot = keeper.snapshot(classes, slices, None, written)
    assert isinstance(allocate(snapshot, POD, [claim("c", exactly("gpu"))]), Unallocatable)
    snapshot = keeper.snapshot(classes, slices, None, written[1:])
    third = allocate(snapshot, POD, [claim("c", exactly("gpu"))])
    assert isinstance(third, Allocation) and devices_of(third, "c") == ["n/gpu-0"]

    # A failed write is forgotten; a changed slice rebuilds the snapshot.
    keeper.assume(third)
    keeper.forget(("default", "c"))
    snapshot = keeper.snapshot(classes, slices, None, written[1:])
    assert isinstance(allocate(snapshot, POD, [claim("d", exactly("gpu"))]), Allocation)
    keeper.snapshot(classes, [versioned(node_slice("n", gpus("gpu-0", "gpu-1", "gpu-2")), "2")], None, [])
    assert keeper.rebuilds == 2


def test_a_selector_that_does_not_compile_fails_the_pod_once_a_device_is_examined() -> None:
    broken = device_class("gpu", "device.driver ==")
    snapshot = Snapshot.build([broken], [node_slice("n", gpus("gpu-0"))])
    outcome = allocate(snapshot, POD, [claim("c", exactly("gpu"))])
    assert isinstance(outcome, Unallocatable)
    fatal = outcome.explanation.fatal
    assert isinstance(fatal, SelectorError) and fatal.failure.compile_error and fatal.source == "class gpu"
    assert "does not compile at line 1, column" in outcome.explanation.render()
    # As in Kubernetes, the expression is only compiled for a device: without devices, no error.
    empty = allocate(Snapshot.build([broken], []), POD, [claim("c", exactly("gpu"))])
    assert isinstance(empty, Unallocatable) and empty.explanation.fatal is None


def test_runtime_error_names_expression_device_and_key() -> None:
    expression = f'device.attributes["{DRIVER}"].type == "gpu"'
    snapshot = Snapshot.build([device_class()], [node_slice("n", gpus("gpu-0", model="x"))])
    request = exactly("gpu", selectors=[{"cel": {"expression": expression}}])
    outcome = allocate(snapshot, POD, [claim("c", request)])
    assert isinstance(outcome, Unallocatable)
    fatal = outcome.explanation.fatal
    assert isinstance(fatal, SelectorError) and fatal.source == "claim"
    assert fatal.failure.expression == expression
    assert fatal.failure.device == "driver.example.com/n/gpu-0"
    assert fatal.failure.key == "type"


def test_pools_with_binding_conditions_come_last() -> None:
    gated = node_slice(
        "n", [{"name": "gated-0", "bindingConditions": ["ready"], "bindingFailureConditions": ["failed"]}]
    )
    gated = ResourceSlice.model_validate(
        {
            **gated.to_dict(),
            "spec": {**gated.to_dict()["spec"], "pool": {"name": "a-pool", "resourceSliceCount": 1}},
        }
    )
    plain = node_slice("n", gpus("plain-0"), name="b-pool", slice="b")
    snapshot = Snapshot.build([device_class()], [gated, plain])
    first = allocate(snapshot, POD, [claim("c", exactly("gpu"))])
    assert isinstance(first, Allocation) and devices_of(first, "c") == ["b-pool/plain-0"]
    first.commit(snapshot)
    second = allocate(snapshot, POD, [claim("d", exactly("gpu"))])
    assert isinstance(second, Allocation)
    (result,) = second.results[("default", "d")].devices.results or []
    assert (result.device, result.binding_conditions, result.binding_failure_conditions) == (
        "gated-0",
        ["ready"],
        ["failed"],
    )
