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


def pods_x_and_y(devices: int) -> World:
    """Two gated Pods, x and y, one single-device claim each, on one node of `devices` devices."""
    w = gang_world(devices=devices)
    add_member(w, "x", None, 0)
    add_member(w, "y", None, 0)
    return w


def test_the_next_decision_does_not_wait_for_the_last_ones_claim_write() -> None:
    w = pods_x_and_y(devices=2)
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
        await until(lambda: not w.reconciler.work.busy(), "both items done")
        runner.cancel()

    asyncio.run(scenario())
    w.sync()
    assert not gated(w.pod("x")) and not gated(w.pod("y"))
    assert sorted(devices_held(w)) == ["gpu-0", "gpu-1"], "two claims, two devices, none twice"


def test_a_refused_claim_write_gives_its_device_back() -> None:
    w = pods_x_and_y(devices=1)
    original = w.kube.replace
    failed: list[str] = []

    async def refused_once(path: str, body: Json) -> Json:
        if path.endswith("/status") and not failed:
            failed.append(body["metadata"]["name"])
            raise KubeError(409, "Conflict")  # an answer: the write did not land
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


@pytest.mark.parametrize(
    "lost",
    [
        pytest.param(KubeError(500, "etcdserver: request timed out"), id="server-error"),
        pytest.param(KubeError(0, "Unreachable", "TimeoutError"), id="no-answer"),
    ],
)
@pytest.mark.parametrize("landed", [True, False], ids=["landed", "not-landed"])
def test_a_claim_write_without_a_clear_answer_holds_its_device_until_settled(
    lost: KubeError, landed: bool
) -> None:
    """The first write's answer is lost, whether or not it landed; its retry waits on a slow API server.
    Meanwhile another Pod's decision must not get the device (were it handed back and the write had landed,
    two claims would hold it); once the retry settles it, the first Pod is placed with it."""
    w = pods_x_and_y(devices=1)
    original = w.kube.replace
    tries: list[str] = []
    release = asyncio.Event()

    async def answer_lost_once(path: str, body: Json) -> Json:
        if not path.endswith("/status"):
            return await original(path, body)
        tries.append(body["metadata"]["name"])
        if len(tries) == 1:
            if landed:
                await original(path, body)
            raise lost
        await release.wait()  # the retry: the API server is slow to answer
        return await original(path, body)

    w.kube.replace = answer_lost_once  # type: ignore[method-assign]

    async def scenario() -> None:
        x = asyncio.create_task(w.reconciler.sync_pod(NS, "x"))
        await until(lambda: len(tries) == 2, "the write sent again")
        await w.reconciler.sync_pod(NS, "y")  # decided while x's write is unsettled
        assert gated(w.pod("y")) and "AllocationFailed" in w.recorder.reasons("y")
        release.set()
        await x

    asyncio.run(scenario())
    w.sync()
    assert holding(w, ["x", "y"]) == ["x"] and devices_held(w) == ["gpu-0"], "one device, one claim"
    assert not gated(w.pod("x")) and gated(w.pod("y"))


def test_a_claim_write_settled_by_another_writer_gives_the_device_back() -> None:
    """The answer is lost and the write did not land; before the retry someone else changed the claim: the
    retry conflicts, a read shows the other write, and the device is free again for the next decision."""
    w = pods_x_and_y(devices=1)
    original = w.kube.replace
    tries: list[str] = []

    async def lost_then_overtaken(path: str, body: Json) -> Json:
        if not path.endswith("/status"):
            return await original(path, body)
        tries.append(body["metadata"]["name"])
        if len(tries) == 1:
            claim = next(c for c in w.kube.of("resourceclaims") if c["metadata"]["name"] == tries[0])
            claim["metadata"].setdefault("labels", {})["touched"] = "by someone else"
            w.kube._bump(claim)
            raise KubeError(504, "Timeout")
        return await original(path, body)

    w.kube.replace = lost_then_overtaken  # type: ignore[method-assign]
    with pytest.raises(KubeError) as raised:
        w.run(w.reconciler.sync_pod(NS, "x"))
    assert raised.value.conflict and len(tries) == 2
    x_claim = next(c for c in w.kube.of("resourceclaims") if c["metadata"]["name"] == tries[0])
    current = w.state.get(CLAIMS, key_of(x_claim))
    assert current is not None and current["metadata"]["labels"] == {"touched": "by someone else"}
    assert not (current.get("status") or {}).get("allocation"), "the read replaced the assumption"
    w.run(w.reconciler.sync_pod(NS, "y"))
    assert holding(w, ["x", "y"]) == ["y"] and devices_held(w) == ["gpu-0"]
