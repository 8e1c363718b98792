"""Snapshot.replace_node_slices: a node's own slices swapped in place decide exactly as a snapshot built
afresh from the same slices and allocations would; what it cannot swap exactly, it refuses untouched."""

from __future__ import annotations

import random
from typing import Any

import pytest
from test_allocation import DRIVER, claim, device_class, exactly, gpus, node_slice

from dra_operator.allocation import Allocation, PodRef, Snapshot, Unallocatable, allocate
from dra_operator.allocation.nodes import Node
from dra_operator.allocation.search import PLACEMENTS, Placement
from dra_operator.allocation.snapshot import ClaimKey
from dra_operator.api.resource import AllocationResult, DeviceTaint, ResourceSlice

POD = PodRef("default", "pod", "uid-1")
NODES = [f"n{i}" for i in range(6)]
# Devices without `memory` make this selector fail at run time: the snapshot's failure bookkeeping
# (`has_failures`, which turns on the full scan) must follow the swaps too.
CLASSES = [
    device_class("gpu", f'device.attributes["{DRIVER}"].type == "gpu"'),
    device_class("big", f'device.attributes["{DRIVER}"].memory >= 64'),
]


def republished(node: str, generation: int, rng: random.Random, failing: bool) -> ResourceSlice:
    """The node's slice at `generation`: some of the device names before, some new, random attributes."""
    names = rng.sample([f"gpu-{i}" for i in range(8)], rng.randint(0, 6))
    devices: list[dict[str, Any]] = []
    for name in sorted(names):
        attributes: dict[str, Any] = {"type": {"string": rng.choice(["gpu", "gpu", "fpga"])}}
        if not (failing and rng.random() < 0.1):
            attributes["memory"] = {"int": rng.choice([32, 64, 80])}
        devices.append({"name": name, "attributes": attributes})
    return node_slice(node, devices, generation=generation)


TAINT = DeviceTaint.model_validate({"key": "maintenance", "effect": "NoSchedule"})
Taints = dict[tuple[str, str, str], tuple[DeviceTaint, ...]]


def rule_taints(slices: dict[str, ResourceSlice], tainted: bool) -> Taints:
    """What a DeviceTaintRule tainting every gpu-1 and gpu-5 would add (the allocator computes it)."""
    if not tainted:
        return {}
    return {
        (DRIVER, s.spec.pool.name, d.name): (TAINT,)
        for s in slices.values()
        for d in s.spec.devices or ()
        if d.name in ("gpu-1", "gpu-5")
    }


def fresh(
    slices: dict[str, ResourceSlice], allocations: dict[ClaimKey, AllocationResult], tainted: bool = False
) -> Snapshot:
    snapshot = Snapshot.build(
        CLASSES, list(slices.values()), [Node(n) for n in NODES], extra_taints=rule_taints(slices, tainted)
    )
    for key, allocation in allocations.items():
        snapshot.record_allocation(key, allocation)
    return snapshot


def outcome_of(outcome: Allocation | Unallocatable) -> Any:
    if isinstance(outcome, Unallocatable):
        return "unallocatable"
    return outcome.node_name, sorted(
        (r.pool, r.device) for result in outcome.results.values() for r in result.devices.results or ()
    )


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("tainted", [False, True], ids=["no-rules", "rule-taints"])
@pytest.mark.parametrize("failing", [False, True], ids=["selectors-hold", "selectors-fail"])
@pytest.mark.parametrize("seed", range(4))
def test_swapped_slices_decide_as_a_fresh_snapshot(
    seed: int, failing: bool, tainted: bool, placement: Placement
) -> None:
    rng = random.Random(seed)
    generations = dict.fromkeys(NODES, 0)
    slices = {n: republished(n, 0, rng, failing) for n in NODES}
    kept = fresh(slices, {}, tainted)
    allocations: dict[ClaimKey, AllocationResult] = {}
    serial = 0
    for _ in range(120):
        action = rng.random()
        if action < 0.25:
            node = rng.choice(NODES)
            generations[node] += 1
            slices[node] = republished(node, generations[node], rng, failing)
            assert kept.replace_node_slices(node, [slices[node]], rule_taints(slices, tainted))
        elif action < 0.4 and allocations:
            key = rng.choice(sorted(allocations))
            kept.release(key)
            del allocations[key]
        else:
            serial += 1
            wanted = claim(
                f"c{serial}", exactly("r", count=rng.randint(1, 3), device_class=rng.choice(["gpu", "big"]))
            )
            expected = allocate(fresh(slices, allocations, tainted), POD, [wanted], placement=placement)
            got = allocate(kept, POD, [wanted], placement=placement)
            assert outcome_of(got) == outcome_of(expected)
            if isinstance(got, Allocation):
                got.commit(kept)
                allocations.update(got.results)
    assert kept.replaced_records > 0
    # The records of replaced slices are not the snapshot's devices any more.
    assert set(kept.tokens()) == set(fresh(slices, allocations, tainted).tokens())


def test_a_device_in_use_keeps_its_claim_across_a_swap_and_a_removed_one_is_never_handed_out() -> None:
    snapshot = Snapshot.build(CLASSES[:1], [node_slice("n0", gpus("gpu-0", type="gpu"))], [Node("n0")])
    first = allocate(snapshot, POD, [claim("first", exactly("r"))])
    assert isinstance(first, Allocation)
    first.commit(snapshot)
    # Republished with gpu-0 and a new gpu-1: gpu-0 stays held by the first claim.
    devices = gpus("gpu-0", "gpu-1", type="gpu")
    assert snapshot.replace_node_slices("n0", [node_slice("n0", devices, generation=1)])
    second = allocate(snapshot, POD, [claim("second", exactly("r"))])
    assert isinstance(second, Allocation) and outcome_of(second) == ("n0", [("n0", "gpu-1")])
    second.commit(snapshot)
    # Republished without gpu-1: the next claim finds nothing free.
    assert snapshot.replace_node_slices("n0", [node_slice("n0", devices[:1], generation=2)])
    assert isinstance(allocate(snapshot, POD, [claim("third", exactly("r"))]), Unallocatable)
    # The first claim released: gpu-0 is free again.
    snapshot.release(("default", "first"))
    third = allocate(snapshot, POD, [claim("third", exactly("r"))])
    assert isinstance(third, Allocation) and outcome_of(third) == ("n0", [("n0", "gpu-0")])


@pytest.mark.parametrize(
    ("case", "node", "replacement"),
    [
        # a pool with a slice on another node too
        (
            "shared pool",
            "n0",
            [node_slice("n0", gpus("gpu-9", type="gpu"), name="shared", slice="n0-shared")],
        ),
        # a slice of another node
        ("another node's slice", "n0", [node_slice("n1", gpus("gpu-9", type="gpu"))]),
        # a node the snapshot does not know
        ("unknown node", "n9", [node_slice("n9", gpus("gpu-9", type="gpu"))]),
        # a slice for every node
        (
            "not node-local",
            "n0",
            [
                ResourceSlice.model_validate(
                    {
                        "metadata": {"name": "all"},
                        "spec": {
                            "driver": DRIVER,
                            "allNodes": True,
                            "pool": {"name": "all", "generation": 0, "resourceSliceCount": 1},
                            "devices": gpus("gpu-9", type="gpu"),
                        },
                    }
                )
            ],
        ),
    ],
)
def test_what_cannot_be_swapped_exactly_is_refused_untouched(
    case: str, node: str, replacement: list[ResourceSlice]
) -> None:
    slices = [
        node_slice("n0", gpus("gpu-0", type="gpu")),
        node_slice("n1", gpus("gpu-0", type="gpu")),
        node_slice("n0", gpus("gpu-1", type="gpu"), name="shared", slice="n0-shared", resourceSliceCount=2),
        node_slice("n1", gpus("gpu-2", type="gpu"), name="shared", slice="n1-shared", resourceSliceCount=2),
    ]
    snapshot = Snapshot.build(CLASSES[:1], slices, [Node("n0"), Node("n1")])
    tokens = snapshot.tokens()
    assert not snapshot.replace_node_slices(node, replacement), case
    assert snapshot.tokens() == tokens and snapshot.replaced_records == 0
    outcome = allocate(snapshot, POD, [claim("c", exactly("r", count=2))], nodes=["n0"])
    assert isinstance(outcome, Allocation) and outcome_of(outcome) == (
        "n0",
        [("n0", "gpu-0"), ("shared", "gpu-1")],
    )


def test_rule_taints_may_change_on_the_swapped_node_only() -> None:
    """DeviceTaintRules taint by what slices say, so the caller hands the taints after the change: a swap
    takes those of the node's own devices, and is refused, untouched, when another node's would change (its
    records keep the taints they were made with)."""
    slices = [node_slice("n0", gpus("gpu-0", type="gpu")), node_slice("n1", gpus("gpu-0", type="gpu"))]
    before: Taints = {(DRIVER, "n1", "gpu-0"): (TAINT,)}
    snapshot = Snapshot.build(CLASSES[:1], slices, [Node("n0"), Node("n1")], extra_taints=before)
    two = gpus("gpu-0", "gpu-1", type="gpu")
    elsewhere: Taints = {**before, (DRIVER, "n1", "gpu-0"): ()}
    assert not snapshot.replace_node_slices("n0", [node_slice("n0", two, generation=1)], elsewhere)
    assert snapshot.replaced_records == 0
    assert not snapshot.replace_node_slices("n0", [node_slice("n0", two, generation=1)])  # none: n1's gone
    # gpu-0 of n0 tainted by the change: only the new gpu-1 is free of it there.
    after: Taints = {**before, (DRIVER, "n0", "gpu-0"): (TAINT,)}
    assert snapshot.replace_node_slices("n0", [node_slice("n0", two, generation=1)], after)
    outcome = allocate(snapshot, POD, [claim("c", exactly("r"))])
    assert isinstance(outcome, Allocation) and outcome_of(outcome) == ("n0", [("n0", "gpu-1")])
    assert isinstance(allocate(snapshot, POD, [claim("d", exactly("r", count=2))]), Unallocatable)


def test_a_failing_selector_is_looked_at_again_once_its_device_is_replaced() -> None:
    """A selector failing on some device makes every search a full scan (`has_failures`); once the device is
    republished with what the selector reads, the scan may skip again."""
    big = CLASSES[1]
    without_memory = node_slice("n0", gpus("gpu-0", type="gpu"))
    snapshot = Snapshot.build([big], [without_memory], [Node("n0")])
    outcome = allocate(snapshot, POD, [claim("c", exactly("r", device_class="big"))])
    assert isinstance(outcome, Unallocatable)
    (signature,) = snapshot._sig_errors
    assert snapshot.has_failures(signature)
    with_memory = gpus("gpu-0", memory=80)
    assert snapshot.replace_node_slices("n0", [node_slice("n0", with_memory, generation=1)])
    assert not snapshot.has_failures(signature)
    assert isinstance(allocate(snapshot, POD, [claim("c", exactly("r", device_class="big"))]), Allocation)
