"""The snapshot's nodes ranked by free candidates (`Snapshot.ranked`), which binpack and spread read: kept up
to date change by change, it must give the order that a count over every node gives after each change."""

from __future__ import annotations

import random
from typing import Any

import pytest
from test_allocation import DRIVER, claim, device_class, exactly, gpus, node_slice

from dra_operator.allocation import Allocation, Node, PodRef, Snapshot, allocate
from dra_operator.allocation.snapshot import RequestSignature
from dra_operator.api.resource import ResourceSlice

POD = PodRef("default", "pod", "uid-1")
GPU = RequestSignature("gpu", (f'device.driver == "{DRIVER}"',), ())
BIG = RequestSignature("gpu", (f'device.driver == "{DRIVER}"',), (f'device.attributes["{DRIVER}"].big == 1',))


def counted(snapshot: Snapshot, needs: dict[RequestSignature, int], most_first: bool = False) -> list[int]:
    """The ranking from a count over every node (what the search did for each decision before)."""
    fitting = []
    for position, node in enumerate(snapshot.nodes):
        free = {signature: snapshot.free_candidates(signature, node) for signature in needs}
        if all(free[signature] >= needed for signature, needed in needs.items()):
            fitting.append((sum(free.values()), position))
    return [p for _, p in sorted(fitting, key=lambda vp: (-vp[0] if most_first else vp[0], vp[1]))]


def shared_slice(devices: list[dict[str, Any]]) -> ResourceSlice:
    """A pool every node sees (allNodes): a change to one of its devices changes every node's count."""
    spec = {
        "driver": DRIVER,
        "allNodes": True,
        "pool": {"name": "shared", "generation": 0, "resourceSliceCount": 1},
        "devices": devices,
    }
    return ResourceSlice.model_validate({"metadata": {"name": "shared"}, "spec": spec})


def devices(size: int) -> list[dict[str, Any]]:
    """`size` GPUs, every other one `big`, so the two signatures count differently."""
    return [{**gpus(f"gpu-{i}", big=i % 2)[0], "name": f"gpu-{i}"} for i in range(size)]


@pytest.mark.parametrize(
    ("seed", "with_shared_pool"),
    [(1, False), (2, False), (3, True), (4, True)],
)
def test_the_kept_ranking_matches_a_full_count_after_every_change(seed: int, with_shared_pool: bool) -> None:
    rng = random.Random(seed)
    slices = [node_slice(f"n{i:02}", devices(rng.choice([2, 4, 8]))) for i in range(12)]
    if with_shared_pool:
        slices.append(shared_slice(gpus("s-0", "s-1", "s-2", big=1)))
    snapshot = Snapshot.build([device_class()], slices)
    held: list[Allocation] = []
    for step in range(120):
        action = rng.random()
        if action < 0.55 or not held:
            count = rng.choice([1, 1, 2, 3])
            requests = [exactly("r", count=count)]
            if rng.random() < 0.3:
                requests[0]["exactly"]["selectors"] = [{"cel": {"expression": BIG.request_expressions[0]}}]
            if rng.random() < 0.3:  # a second signature: the ranking by the sum over both
                big = exactly("big", count=rng.choice([1, 2]))
                big["exactly"]["selectors"] = [{"cel": {"expression": BIG.request_expressions[0]}}]
                requests.append(big)
            placement = rng.choice(["binpack", "spread"])
            outcome = allocate(snapshot, POD, [claim(f"c{step}", *requests)], placement=placement)
            if isinstance(outcome, Allocation):
                outcome.commit(snapshot)
                held.append(outcome)
        elif action < 0.9:
            gone = held.pop(rng.randrange(len(held)))
            for key in gone.results:
                snapshot.release(key)
        else:
            # The node's agent republishes it with another device count.
            node = f"n{rng.randrange(12):02}"
            snapshot.replace_node_slices(node, [node_slice(node, devices(rng.choice([2, 4, 8])))])
        for needs in ({GPU: 1}, {GPU: 2}, {GPU: 3}, {BIG: 1}, {BIG: 2}, {GPU: 1, BIG: 1}, {GPU: 2, BIG: 1}):
            for most_first in (False, True):
                kept = list(snapshot.ranked(needs, most_first))
                assert kept == counted(snapshot, needs, most_first), (step, needs, most_first)


def test_binpack_and_spread_follow_the_ranking_as_devices_are_released() -> None:
    """n1 is the fullest, until its devices are released: then binpack moves to n2, spread to n1."""
    slices = [node_slice(node, gpus(*(f"gpu-{i}" for i in range(4)))) for node in ("n1", "n2", "n3")]
    snapshot = Snapshot.build([device_class()], slices)
    fills = {}
    for node, used in (("n1", 3), ("n2", 2)):
        outcome = allocate(snapshot, POD, [claim(f"fill-{node}", exactly("r", count=used))], nodes=[node])
        assert isinstance(outcome, Allocation)
        outcome.commit(snapshot)
        fills[node] = outcome

    def chosen(placement: str) -> str | None:
        outcome = allocate(snapshot, POD, [claim("c", exactly("r"))], placement=placement)  # type: ignore[arg-type]
        assert isinstance(outcome, Allocation)
        return outcome.node_name

    assert (chosen("binpack"), chosen("spread")) == ("n1", "n3")
    for key in fills["n1"].results:
        snapshot.release(key)
    assert (chosen("binpack"), chosen("spread")) == ("n2", "n1")


def test_a_pod_restricted_to_some_nodes_gets_the_best_ranked_of_those() -> None:
    slices = [node_slice(node, gpus(*(f"gpu-{i}" for i in range(4)))) for node in ("n1", "n2", "n3")]
    snapshot = Snapshot.build([device_class()], slices)
    outcome = allocate(snapshot, POD, [claim("fill", exactly("r", count=3))], nodes=["n1"])
    assert isinstance(outcome, Allocation)
    outcome.commit(snapshot)
    restricted = allocate(snapshot, POD, [claim("c", exactly("r"))], nodes=["n2", "n3"], placement="binpack")
    assert isinstance(restricted, Allocation) and restricted.node_name == "n2"
    free = allocate(snapshot, POD, [claim("c", exactly("r"))], placement="binpack")
    assert isinstance(free, Allocation) and free.node_name == "n1"


def test_devices_of_a_node_the_snapshot_does_not_know_leave_the_ranking_exact() -> None:
    """A claim allocated on n3's devices (n3 has a slice but is not among the snapshot's nodes): taking and
    freeing them changes no known node's count."""
    slices = [node_slice(node, gpus("gpu-0", "gpu-1")) for node in ("n1", "n2", "n3")]
    snapshot = Snapshot.build([device_class()], slices, nodes=[Node("n1"), Node("n2")])
    wider = Snapshot.build([device_class()], slices)
    elsewhere = allocate(wider, POD, [claim("elsewhere", exactly("r", count=2))], nodes=["n3"])
    assert isinstance(elsewhere, Allocation) and elsewhere.node_name == "n3"
    assert list(snapshot.ranked({GPU: 1})) == [0, 1]
    elsewhere.commit(snapshot)
    first = allocate(snapshot, POD, [claim("c", exactly("r"))], placement="binpack")
    assert isinstance(first, Allocation) and first.node_name == "n1"
    first.commit(snapshot)
    for key in elsewhere.results:
        snapshot.release(key)
    for most_first in (False, True):
        assert list(snapshot.ranked({GPU: 1}, most_first)) == counted(snapshot, {GPU: 1}, most_first)
    assert list(snapshot.ranked({GPU: 1})) == [0, 1]
