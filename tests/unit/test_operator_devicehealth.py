"""The device-health loop: a Pod is told when a device it holds turns unhealthy, and the slices' devices are
gathered again only when a slice's spec changed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import test_operator_taintrules as taintrules_tests
from test_operator_taintrules import FakeRecorder

from dra_operator.operator import devicehealth
from dra_operator.operator.devicehealth import REASON, DeviceHealthWatch
from dra_operator.operator.state import CLAIMS, INDEXES, PODS, SLICES, State, key_of

Json = dict[str, Any]
DRIVER = "d.example.com"


class FakeKube(taintrules_tests.FakeKube):
    answer: Json = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns", "uid": "p1"},
    }


def slice_of(*devices: str, generation: int = 1) -> Json:
    return {
        "apiVersion": "resource.dra-operator.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": "n1-slice", "uid": "s1", "resourceVersion": str(generation)},
        "spec": {
            "driver": DRIVER,
            "nodeName": "n1",
            "pool": {"name": "n1", "generation": generation, "resourceSliceCount": 1},
            "devices": [{"name": name} for name in devices],
        },
    }


def claim(name: str) -> Json:
    result = {"request": "gpu", "driver": DRIVER, "pool": "n1", "device": "gpu-0"}
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}", "resourceVersion": "1"},
        "status": {
            "allocation": {"devices": {"results": [result]}},
            "reservedFor": [{"resource": "pods", "name": "p", "uid": "p1"}],
        },
    }


POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns", "uid": "p1"}}


def count_calls(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Replace `module.name` with a wrapper that appends to the returned list on each call."""
    calls: list[int] = []
    original = getattr(module, name)

    def counted(*args: Any) -> Any:
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(module, name, counted)
    return calls


def watching(objects: dict[str, list[Json]]) -> tuple[State, DeviceHealthWatch, FakeRecorder]:
    """Caches holding `objects` (kind -> objects), and a leader's device-health watch over them."""
    state = State()
    state.bind({name: {key_of(o): [o] for o in objects.get(name, [])} for name in INDEXES})
    recorder = FakeRecorder()
    return state, DeviceHealthWatch(FakeKube(), state, recorder, lambda: True), recorder  # type: ignore[arg-type]


def test_only_a_slice_change_gathers_the_devices_again(monkeypatch: pytest.MonkeyPatch) -> None:
    gathered = count_calls(monkeypatch, devicehealth, "current_devices")
    slices = [slice_of("gpu-0", "gpu-1")]
    state, watch, recorder = watching({SLICES: slices, CLAIMS: [claim("c")], PODS: [POD]})
    assert state.indexes is not None
    assert asyncio.run(watch.check()) == 0
    for n in range(3):  # claims come and go: each pass runs, none gathers the devices again
        state.indexes[CLAIMS][("ns", f"c{n}")] = [claim(f"c{n}")]
        state.touch(CLAIMS, ("ns", f"c{n}"))
        assert asyncio.run(watch.check()) == 0
    assert len(gathered) == 1 and not recorder.events
    state.indexes[SLICES][("", "n1-slice")] = [slice_of("gpu-1", generation=2)]  # gpu-0 withdrawn
    state.touch(SLICES, ("", "n1-slice"))  # as the slices' watch handler does for a new spec
    assert asyncio.run(watch.check()) == 1
    assert len(gathered) == 2
    ((pod, reason, message),) = recorder.events
    assert (pod, reason) == ("p", REASON) and f"{DRIVER}/n1/gpu-0 (no longer offered" in message


def test_between_slice_changes_a_pass_checks_only_the_changed_claims_and_those_still_owed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked = count_calls(monkeypatch, devicehealth, "unhealthy_of")
    slices = [slice_of("gpu-0", "gpu-1")]
    state, watch, recorder = watching({SLICES: slices, CLAIMS: [claim("c"), claim("d")]})
    assert state.indexes is not None
    assert asyncio.run(watch.check()) == 0
    assert len(checked) == 2, "the first pass checks every claim"
    state.indexes[CLAIMS][("ns", "e")] = [claim("e")]
    state.touch(CLAIMS, ("ns", "e"))
    assert asyncio.run(watch.check()) == 0
    assert len(checked) == 3, "then only the claim that changed"

    state.indexes[SLICES][("", "n1-slice")] = [slice_of("gpu-1", generation=2)]  # gpu-0 withdrawn
    state.touch(SLICES, ("", "n1-slice"))
    assert asyncio.run(watch.check()) == 0, "the Pod is not in the caches yet: nobody to tell"
    assert len(checked) == 6, "a slice changed: every claim"
    state.indexes[PODS] = {key_of(POD): [POD]}
    state.note(PODS, POD)
    assert asyncio.run(watch.check()) == 1, "nothing changed, but the report is still owed"
    assert len(checked) == 9, "the three claims that owe it, no other"
    assert len(recorder.events) == 1, "one Pod, told once for its device"
    assert asyncio.run(watch.check()) == 0
