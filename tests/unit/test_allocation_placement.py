"""The placement policy: which node, among those with a solution, a Pod's claims go to."""

from __future__ import annotations

import pytest
from test_allocation import claim, device_class, exactly, gpus, node_slice

from dra_operator.allocation import Allocation, PodRef, Snapshot, Unallocatable, allocate
from dra_operator.allocation.search import PLACEMENTS, Placement

POD = PodRef("default", "pod", "uid-1")


def cluster(free: dict[str, int], size: int = 8) -> Snapshot:
    """Nodes of `size` GPUs each, of which `size - free[node]` are in use."""
    slices = [node_slice(node, gpus(*(f"gpu-{i}" for i in range(size)))) for node in free]
    snapshot = Snapshot.build([device_class()], slices)
    for node, count in free.items():
        used = size - count
        if used:
            filler = claim(f"fill-{node}", exactly("r", count=used))
            outcome = allocate(snapshot, POD, [filler], nodes=[node])
            assert isinstance(outcome, Allocation)
            outcome.commit(snapshot)
    return snapshot


@pytest.mark.parametrize(
    ("free", "count", "placement", "node"),
    [
        # n1 nearly full, n2 empty: one GPU
        ({"n1": 2, "n2": 8}, 1, "binpack", "n1"),
        ({"n1": 2, "n2": 8}, 1, "spread", "n2"),
        ({"n1": 2, "n2": 8}, 1, "first", "n1"),
        # n1 empty, n2 nearly full: binpack fills n2 and keeps n1 whole
        ({"n1": 8, "n2": 1}, 1, "binpack", "n2"),
        ({"n1": 8, "n2": 1}, 1, "spread", "n1"),
        ({"n1": 8, "n2": 1}, 1, "first", "n1"),
        # only nodes that fit are ranked: 3 GPUs do not fit on n2
        ({"n1": 8, "n2": 2, "n3": 4}, 3, "binpack", "n3"),
        ({"n1": 8, "n2": 2, "n3": 4}, 3, "spread", "n1"),
        # ties go by name
        ({"n2": 4, "n1": 4}, 1, "binpack", "n1"),
        ({"n2": 4, "n1": 4}, 1, "spread", "n1"),
    ],
)
def test_the_policy_chooses_among_nodes_that_fit(
    free: dict[str, int], count: int, placement: Placement, node: str
) -> None:
    outcome = allocate(cluster(free), POD, [claim("c", exactly("r", count=count))], placement=placement)
    assert isinstance(outcome, Allocation) and outcome.node_name == node


def test_nothing_fits_whatever_the_policy() -> None:
    for placement in PLACEMENTS:
        outcome = allocate(
            cluster({"n1": 1, "n2": 2}), POD, [claim("c", exactly("r", count=3))], placement=placement
        )
        assert isinstance(outcome, Unallocatable)


def test_binpacking_keeps_whole_nodes_for_large_requests() -> None:
    """A mixed 1- and 8-GPU workload: under binpack the ones fill one node, so the eight still fits; under
    spread they land on both nodes and the eight does not."""
    results = {}
    placements: tuple[Placement, ...] = ("binpack", "spread")
    for placement in placements:
        snapshot = cluster({"n1": 8, "n2": 8})
        for index in range(4):
            outcome = allocate(snapshot, POD, [claim(f"one-{index}", exactly("r"))], placement=placement)
            assert isinstance(outcome, Allocation)
            outcome.commit(snapshot)
        big = allocate(snapshot, POD, [claim("eight", exactly("r", count=8))], placement=placement)
        results[placement] = isinstance(big, Allocation)
    assert results == {"binpack": True, "spread": False}
