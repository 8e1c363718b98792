"""The free-devices view's pass: it writes a slice's counts when they changed, follows claims coming and going
without reading the slices' devices again, and reads them again when a slice's spec changed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_operator_devicehealth import claim, count_calls, slice_of
from test_operator_taintrules import FakeKube

from dra_operator.kube.client import KubeError
from dra_operator.operator import poolstatus
from dra_operator.operator.poolstatus import PoolStatus
from dra_operator.operator.state import CLAIMS, INDEXES, SLICES, State, key_of

Json = dict[str, Any]


class SliceKube(FakeKube):
    """Answers a slice status patch as the API server does: the slice with its new status, at a new
    resourceVersion."""

    def __init__(self, state: State) -> None:
        super().__init__()
        self.state = state

    async def merge_patch(self, path: str, body: Json) -> Json:
        await super().merge_patch(path, body)
        name = path.split("/resourceslices/")[1].split("/")[0]
        current = self.state.get(SLICES, ("", name))
        assert current is not None
        meta = {
            **current["metadata"],
            "resourceVersion": str(int(current["metadata"]["resourceVersion"]) + 1),
        }
        return {**current, "metadata": meta, "status": body["status"]}


def written(kube: FakeKube) -> list[Json]:
    """The statuses written since the last look."""
    found = [body["status"] for method, _, body in kube.calls if method == "PATCH"]
    kube.calls.clear()
    return found


def test_counts_follow_claims_and_the_devices_are_read_again_only_after_a_slice_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = State()
    objects = {SLICES: [slice_of("gpu-0", "gpu-1")], CLAIMS: [claim("c")]}
    state.bind({name: {key_of(o): [o] for o in objects.get(name, [])} for name in INDEXES})
    read = count_calls(monkeypatch, poolstatus, "slice_devices")
    kube = SliceKube(state)
    pools = PoolStatus(kube, state, lambda: True, interval=5.0)  # type: ignore[arg-type]
    assert state.indexes is not None

    assert asyncio.run(pools.update()) == 1
    assert written(kube) == [{"devices": 2, "allocated": 1, "tainted": 0, "free": 1}]
    assert asyncio.run(pools.update()) == 0, "nothing changed: the pass is skipped"

    del state.indexes[CLAIMS][("ns", "c")]  # the claim went: its device is free again
    state.touch(CLAIMS, ("ns", "c"))
    asyncio.run(pools.update())
    assert written(kube) == [{"devices": 2, "allocated": 0, "tainted": 0, "free": 2}]
    assert len(read) == 1, "claims changed, the slices did not: their devices were not read again"

    tainted = slice_of("gpu-0", "gpu-1", "gpu-2", generation=2)
    tainted["spec"]["devices"][2]["taints"] = [{"key": "d.example.com/xid", "effect": "NoSchedule"}]
    tainted["metadata"]["resourceVersion"] = "10"  # after our status writes
    state.indexes[SLICES][("", "n1-slice")] = [tainted]
    state.touch(SLICES, ("", "n1-slice"))  # as the slices' watch handler does for a new spec
    asyncio.run(pools.update())
    assert written(kube) == [{"devices": 3, "allocated": 0, "tainted": 1, "free": 2}]
    assert len(read) == 2


def second_slice() -> Json:
    other = slice_of("gpu-0", "gpu-1")
    other["metadata"] = {**other["metadata"], "name": "n2-slice", "uid": "s2"}
    other["spec"] = {**other["spec"], "nodeName": "n2", "pool": {**other["spec"]["pool"], "name": "n2"}}
    return other


def two_slices() -> tuple[State, SliceKube]:
    state = State()
    objects = {SLICES: [slice_of("gpu-0", "gpu-1"), second_slice()], CLAIMS: [claim("c")]}
    state.bind({name: {key_of(o): [o] for o in objects.get(name, [])} for name in INDEXES})
    return state, SliceKube(state)


def watch_catches_up(state: State) -> None:
    """The slices' watch brings our status writes into the caches."""
    assert state.indexes is not None
    for key in list(state.indexes[SLICES]):
        current = state.get(SLICES, key)
        assert current is not None
        state.indexes[SLICES][key] = [current]


def test_a_claim_change_compares_only_the_slices_whose_counts_moved() -> None:
    state, kube = two_slices()
    pools = PoolStatus(kube, state, lambda: True, interval=5.0)  # type: ignore[arg-type]
    assert asyncio.run(pools.update()) == 2  # the first pass writes every slice
    kube.calls.clear()
    watch_catches_up(state)
    assert state.indexes is not None
    # Someone else's status-only edit of n2-slice (no journal entry), then a change of n1-slice's claim.
    before = state.indexes[SLICES][("", "n2-slice")][0]
    edited = {**before, "metadata": {**before["metadata"], "resourceVersion": "3"}, "status": {"devices": 99}}
    state.indexes[SLICES][("", "n2-slice")] = [edited]
    del state.indexes[CLAIMS][("ns", "c")]
    state.touch(CLAIMS, ("ns", "c"))
    asyncio.run(pools.update())
    assert [path for _, path, _ in kube.calls] == [
        "/apis/resource.dra-operator.io/v1/resourceslices/n1-slice/status"
    ], "only the slice the claim's device is in"


def test_a_new_leadership_term_compares_every_slice() -> None:
    state, kube = two_slices()
    leading = [True]
    pools = PoolStatus(kube, state, lambda: leading[0], interval=5.0)  # type: ignore[arg-type]
    asyncio.run(pools.update())
    kube.calls.clear()
    watch_catches_up(state)
    assert state.indexes is not None
    # Another leader wrote n2-slice's status while this replica stood by (a status write: no journal entry).
    before = state.indexes[SLICES][("", "n2-slice")][0]
    meta = {**before["metadata"], "resourceVersion": "3"}
    stale = {**before, "metadata": meta, "status": {"devices": 2, "allocated": 2}}
    state.indexes[SLICES][("", "n2-slice")] = [stale]
    assert pools._leading()
    assert asyncio.run(pools.update()) == 0, "nothing changed and the term went on: skipped"
    leading[0] = False
    assert not pools._leading()
    leading[0] = True
    assert pools._leading()
    assert asyncio.run(pools.update()) == 1
    assert written(kube) == [{"devices": 2, "allocated": 0, "tainted": 0, "free": 2}]


class FailingOnce(SliceKube):
    def __init__(self, state: State) -> None:
        super().__init__(state)
        self.failures = 1

    async def merge_patch(self, path: str, body: Json) -> Json:
        if self.failures:
            self.failures -= 1
            raise KubeError(500, "etcd timeout")
        return await super().merge_patch(path, body)


def test_a_failed_write_is_tried_again_at_the_next_pass() -> None:
    state = State()
    objects = {SLICES: [slice_of("gpu-0", "gpu-1")], CLAIMS: [claim("c")]}
    state.bind({name: {key_of(o): [o] for o in objects.get(name, [])} for name in INDEXES})
    kube = FailingOnce(state)
    pools = PoolStatus(kube, state, lambda: True, interval=5.0)  # type: ignore[arg-type]
    assert asyncio.run(pools.update()) == 0
    assert asyncio.run(pools.update()) == 1, "nothing changed, but the last pass left a write undone"
    assert written(kube) == [{"devices": 2, "allocated": 1, "tainted": 0, "free": 1}]
    assert asyncio.run(pools.update()) == 0
