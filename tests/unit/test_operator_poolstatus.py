"""The free-devices view's pass: it writes a slice's counts when they changed, follows claims coming and going
without reading the slices' devices again, and reads them again when a slice's spec changed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_operator_devicehealth import claim, count_calls, slice_of
from test_operator_taintrules import FakeKube

from dra_operator.operator import poolstatus
from dra_operator.operator.poolstatus import PoolStatus
from dra_operator.operator.state import CLAIMS, INDEXES, SLICES, State, key_of

Json = dict[str, Any]


class SliceKube(FakeKube):
    """Answers a slice status patch as the API server does: the slice with its new status."""

    def __init__(self, state: State) -> None:
        super().__init__()
        self.state = state

    async def merge_patch(self, path: str, body: Json) -> Json:
        await super().merge_patch(path, body)
        name = path.split("/resourceslices/")[1].split("/")[0]
        current = self.state.get(SLICES, ("", name))
        assert current is not None
        return {**current, "status": body["status"]}


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
    state.indexes[SLICES][("", "n1-slice")] = [tainted]
    state.touch(SLICES, ("", "n1-slice"))  # as the slices' watch handler does for a new spec
    asyncio.run(pools.update())
    assert written(kube) == [{"devices": 3, "allocated": 0, "tainted": 1, "free": 2}]
    assert len(read) == 2
