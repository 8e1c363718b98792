"""Assumed reservations: a decision's claim writes overlap the next decisions, which already see its devices
taken; a write that fails gives its devices back. With the real allocator."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_admission_process import until
from test_operator_gangs import add_member, gang_world, holding
from test_operator_reconciler import NS, World, gated

from dra_operator.kube.client import KubeError
from dra_operator.operator.state import CLAIMS, key_of

Json = dict[str, Any]


def devices_held(w: World) -> list[str]:
    return [
        result["device"]
        for claim in w.kube.of("resourceclaims")
        for result in ((claim.get("status") or {}).get("allocation") or {})
        .get("devices", {})
        .get("results", [])
    ]


def test_the_next_decision_does_not_wait_for_the_last_ones_claim_write() -> None:
    w = gang_world(devices=2)
    add_member(w, "x", None, 0)
    add_member(w, "y", None, 0)
    original = w.kube.replace
    started: list[str] = []
    release = asyncio.Event()

    async def held_first(path: str, body: Json) -> Json:
        if path.endswith("/status"):
            started.append(body["metadata"]["name"])
            if len(started) == 1:
                await release.wait()  # the API server is slow to answer the first decision's write
        return await original(path, body)

    w.kube.replace = held_first  # type: ignore[method-assign]
    w.reconciler.workers = 2

    async def scenario() -> None:
        runner = asyncio.create_task(w.reconciler.run())
        w.reconciler.enqueue("pod", NS, "x")
        w.reconciler.enqueue("pod", NS, "y")
        await until(
            lambda: len(started) == 2, "the second Pod's claim written while the first's is in flight"
        )
        release.set()
        await until(lambda: not w.reconciler.queue.qsize() and not w.reconciler._active, "both items done")
        runner.cancel()

    asyncio.run(scenario())
    w.sync()
    assert not gated(w.pod("x")) and not gated(w.pod("y"))
    assert sorted(devices_held(w)) == ["gpu-0", "gpu-1"], "two claims, two devices, none twice"


def test_a_failed_claim_write_gives_its_device_back() -> None:
    w = gang_world(devices=1)
    add_member(w, "x", None, 0)
    add_member(w, "y", None, 0)
    original = w.kube.replace
    failed: list[str] = []

    async def refused_once(path: str, body: Json) -> Json:
        if path.endswith("/status") and not failed:
            failed.append(body["metadata"]["name"])
            raise KubeError(500, "etcdserver: request timed out")
        return await original(path, body)

    w.kube.replace = refused_once  # type: ignore[method-assign]
    with pytest.raises(KubeError):
        w.run(w.reconciler.sync_pod(NS, "x"))
    x_claim = next(c for c in w.kube.of("resourceclaims") if c["metadata"]["name"] == failed[0])
    assumed = w.state.get(CLAIMS, key_of(x_claim))
    assert assumed is not None and not (assumed.get("status") or {}).get("allocation"), "no longer assumed"

    w.run(w.reconciler.sync_pod(NS, "y"))  # the one device is free again: y gets it
    w.run(w.reconciler.sync_pod(NS, "x"))  # and x, tried again, finds none
    assert holding(w, ["x", "y"]) == ["y"] and devices_held(w) == ["gpu-0"]
    assert gated(w.pod("x")) and "AllocationFailed" in w.recorder.reasons("x")
