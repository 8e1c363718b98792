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


def test_only_a_slice_change_gathers_the_devices_again(monkeypatch: pytest.MonkeyPatch) -> None:
    state = State()
    objects = {SLICES: [slice_of("gpu-0", "gpu-1")], CLAIMS: [claim("c")], PODS: [POD]}
    state.bind({name: {key_of(o): [o] for o in objects.get(name, [])} for name in INDEXES})
    gathered = count_calls(monkeypatch, devicehealth, "current_devices")
    kube, recorder = FakeKube(), FakeRecorder()
    watch = DeviceHealthWatch(kube, state, recorder, lambda: True)  # type: ignore[arg-type]
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
