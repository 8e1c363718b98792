"""Writes the API server refuses for good (issue 10 item 2): a Warning event and a claim condition, then
exponential backoff instead of a hot retry; a failed precondition is still retried at once."""

from __future__ import annotations

import asyncio
from typing import Any

from test_operator_reconciler import NS, TEMPLATE, World, claims_path, pods_path

from dra_operator.kube.client import KubeError
from dra_operator.operator.reconciler import (
    PERMANENT_BACKOFF_CAP,
    POD,
    TRANSIENT_BACKOFF_CAP,
    WRITE_REJECTED,
)
from dra_operator.operator.workqueue import backoff

Json = dict[str, Any]
INVALID = {
    "kind": "Status",
    "reason": "Invalid",
    "message": 'ResourceClaim.resource.dra-operator.io "p-gpu-x" is invalid: metadata.labels: Invalid value',
    "details": {
        "name": "p-gpu-x",
        "group": "resource.dra-operator.io",
        "kind": "ResourceClaim",
        "causes": [{"reason": "FieldValueInvalid", "message": "Invalid value", "field": "metadata.labels"}],
    },
}
# What kube-apiserver 1.36 answers to a JSON patch whose `test` op fails (measured).
TEST_FAILED = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "the server rejected our request due to an error in our request",
    "reason": "Invalid",
    "details": {},
    "code": 422,
}
TEMPLATES = f"/apis/resource.dra-operator.io/v1/namespaces/{NS}/resourceclaimtemplates/tmpl"


def test_backoff_schedule() -> None:
    assert [backoff(n, PERMANENT_BACKOFF_CAP) for n in range(1, 12)] == [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0,
    ]  # fmt: skip
    assert backoff(10, TRANSIENT_BACKOFF_CAP) == 30.0


def test_permanent_vs_precondition() -> None:
    assert KubeError(422, "Unprocessable Entity", INVALID).permanent
    assert KubeError(403, "Forbidden", {"reason": "Forbidden"}).permanent
    # A failed JSON-patch `test` is a 422 Invalid with empty details: a precondition, a fresh read fixes it.
    assert not KubeError(422, "Unprocessable Entity", TEST_FAILED).permanent
    assert not KubeError(409, "Conflict").permanent
    assert not KubeError(0, "Unreachable").permanent


def test_refused_claim_creation_backs_off_and_says_why() -> None:
    w = World()
    w.add(TEMPLATES, dict(TEMPLATE))
    w.add_pod("p", [{"name": "gpu", "resourceClaimTemplateName": "tmpl"}])
    calls: list[str] = []

    async def refuse(path: str, body: Json) -> Json:
        calls.append(path)
        raise KubeError(422, "Unprocessable Entity", INVALID, method="POST", path=path)

    w.kube.create = refuse  # type: ignore[method-assign]

    async def scenario() -> list[float]:
        r = w.reconciler
        r.enqueue(POD, NS, "p")
        worker = asyncio.create_task(r.run())
        async with asyncio.timeout(3):
            while not r.work.retries:  # noqa: ASYNC110 - the fake server's state, polled on the loop
                await asyncio.sleep(0.01)
        delays: list[float] = []
        loop = asyncio.get_running_loop()
        for _ in range(3):  # a watch event (the Pod or template changed) retries at once, and backs off more
            handle = r.work.retries.pop((POD, NS, "p"))
            delays.append(round(handle.when() - loop.time()))
            handle.cancel()
            r.enqueue(POD, NS, "p")
            async with asyncio.timeout(3):
                while not r.work.retries:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        worker.cancel()
        return delays

    delays = asyncio.run(scenario())
    assert len(calls) == 4, "one POST per try: no hot loop"
    assert delays == [1, 2, 4]
    events = [e for e in w.recorder.events if e[2] == WRITE_REJECTED]
    assert events and events[0][0] == "p" and events[0][1] == "Warning"
    assert "refused to create a ResourceClaim (422 Invalid)" in events[0][3]
    assert "metadata.labels: Invalid value" in events[0][3]
    assert not w.kube.of("resourceclaims")


def test_refused_status_write_puts_a_condition_on_the_claim() -> None:
    w = World()
    w.add(TEMPLATES, dict(TEMPLATE))
    w.add_pod("p", [{"name": "gpu", "resourceClaimTemplateName": "tmpl"}])
    original = w.kube.replace
    patches: list[Json] = []

    async def refuse(path: str, body: Json) -> Json:
        if path.endswith("/status"):
            raise KubeError(
                403, "Forbidden", {"reason": "Forbidden", "message": "no"}, method="PUT", path=path
            )
        return await original(path, body)

    async def merge_patch(path: str, patch: Json) -> Json:
        patches.append(patch)
        current = w.kube.objects[path.removesuffix("/status")]
        current.setdefault("status", {}).update(patch["status"])
        return w.kube._bump(current)

    w.kube.replace = refuse  # type: ignore[method-assign]
    w.kube.merge_patch = merge_patch  # type: ignore[attr-defined]
    w.run(w.reconciler._process((POD, NS, "p")))
    (claim,) = w.kube.of("resourceclaims")
    (condition,) = [c for c in claim["status"]["conditions"] if c["type"] == WRITE_REJECTED]
    assert condition["status"] == "True" and condition["reason"] == "Forbidden"
    assert f"refused to update status of ResourceClaim {claim['metadata']['name']}" in condition["message"]
    assert claims_path(claim["metadata"]["name"]) in w.kube.objects
    assert w.recorder.reasons("p")[-1] == WRITE_REJECTED
    w.run(w.reconciler._process((POD, NS, "p")))
    assert len(patches) == 1, "the same condition is not written again"
    assert pods_path("p") in w.kube.objects
