"""The operator's writes to ResourceClaims, and the claim statuses they carry: each write has its precondition
(a resourceVersion, or a JSON-patch `test`) and puts its answer into the caches at once (State.wrote), so the
next decision reads it without waiting for the watch; each tells the user what changed where an event is due.
The reconciler decides; these write."""

from __future__ import annotations

import asyncio
import copy
import datetime
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from dra_operator.admission import names
from dra_operator.kube.client import Kube, KubeError, ours
from dra_operator.operator import metrics
from dra_operator.operator.events import Recorder
from dra_operator.operator.placement import claim_state, is_deleting, reserved_uids
from dra_operator.operator.state import CLAIMS, Json, State, key_of, name_of
from dra_operator.operator.workqueue import TRANSIENT_BACKOFF_CAP, backoff

# The reconciler's logger: these writes are steps of its items, and their lines read with its own.
log = structlog.get_logger("dra_operator.reconciler")

#: The claim condition (and Warning event reason) of a write the API server refused for good.
WRITE_REJECTED = "WriteRejected"


@dataclass(frozen=True)
class Reservation:
    """One claim's planned status write: `new` is assumed in the state until the write answers."""

    pod_claim: str
    claim: Json  # as it is now (its resourceVersion is the write's precondition)
    new: Json
    newly: bool  # allocated by this decision (not only reserved)
    undo: Callable[[], None]


def undo_all(plans: Iterable[Reservation]) -> None:
    """Drop the assumptions of `plans` whose writes did not land (a no-op for the written ones)."""
    for plan in plans:
        plan.undo()


def reserved_status(claim: Json, pod: Json, allocation: Json | None, node: str | None) -> Json | None:
    """`claim` allocated (if it is not yet) and reserved for `pod`, with its state and conditions; None when
    it already is both."""
    status = claim.get("status") or {}
    uid = pod["metadata"]["uid"]
    if status.get("allocation") and uid in reserved_uids(claim):
        return None
    new = copy.deepcopy(claim)
    new_status = new.setdefault("status", {}) or {}
    new["status"] = new_status
    newly = not status.get("allocation")
    if newly:
        if allocation is None:
            raise RuntimeError(f"allocator gave no allocation for unallocated claim {name_of(claim)}")
        new_status["allocation"] = allocation
        new_status["nodeName"] = node
    reserved = list(new_status.get("reservedFor") or [])
    reserved.append({"resource": "pods", "name": pod["metadata"]["name"], "uid": uid})
    new_status["reservedFor"] = reserved
    new_status["state"] = claim_state(new)
    new_status["conditions"] = _conditions(new_status, "Allocated" if newly else "Reserved")
    return new


def _owned_by(claim: Mapping[str, Any], uid: str) -> bool:
    """Whether `claim` was generated for the Pod with this uid (it names the Pod its owner)."""
    refs = (claim.get("metadata") or {}).get("ownerReferences") or []
    return any(isinstance(ref, dict) and ref.get("uid") == uid for ref in refs)


def devices_text(allocation: Mapping[str, Any]) -> str:
    """`driver/pool/device,...` of an allocation's results, for events."""
    results = (allocation.get("devices") or {}).get("results") or []
    return ",".join(f"{r.get('driver')}/{r.get('pool')}/{r.get('device')}" for r in results)


def _conditions(status: Mapping[str, Any], reason: str) -> list[Json]:
    """The claim's Allocated and Reserved conditions for `status`; a condition whose status did not change
    keeps its lastTransitionTime (status["conditions"] still holds the previous ones)."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    previous = {c.get("type"): c for c in status.get("conditions") or [] if isinstance(c, dict)}
    consumers = len(status.get("reservedFor") or [])
    allocated = "True" if status.get("allocation") else "False"
    reserved = "True" if consumers else "False"
    conditions = []
    for type_, value, message in (
        ("Allocated", allocated, "devices allocated" if allocated == "True" else "not allocated"),
        ("Reserved", reserved, f"{consumers} consumer(s)"),
    ):
        before = previous.get(type_) or {}
        since = before.get("lastTransitionTime") if before.get("status") == value else None
        conditions.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since or now,
            }
        )
    return conditions


@dataclass
class ClaimWrites:
    """The writes, each answer put into `state`. Each raises KubeError when the API server refuses it or its
    precondition failed (the reconciler retries the item), except the WriteRejected condition: a report,
    best effort."""

    kube: Kube
    state: State
    recorder: Recorder
    #: Called when devices were handed back (a claim deallocated or deleted): waiting Pods may fit now.
    released: Callable[[], None]

    async def consumers(self, claim: Json, keep: list[Json], why: str) -> Json:
        """Write `keep` as the claim's consumers (one status PUT with its resourceVersion); with none left,
        the allocation goes too. Returns the claim as written."""
        new = copy.deepcopy(claim)
        new_status = new.setdefault("status", {}) or {}
        new["status"] = new_status
        deallocate = not keep and bool(new_status.get("allocation"))
        if deallocate:
            for key in ("allocation", "nodeName", "reservedFor", "devices"):
                new_status.pop(key, None)
        else:
            new_status["reservedFor"] = keep
        new_status["state"] = claim_state(new)
        new_status["conditions"] = _conditions(new_status, "Deallocated" if deallocate else "Released")
        written = await self.kube.replace(ours("resourceclaims", *key_of(claim), subresource="status"), new)
        self.state.wrote(CLAIMS, written)
        if deallocate:
            metrics.RELEASES.inc()
            self.recorder.normal(written, "Deallocated", f"{why}: devices released")
            log.info("claim deallocated", claim=name_of(claim))
            self.released()
        return written

    async def ensure_finalizer(self, claim: Json) -> Json:
        """`claim` with our finalizer, added now if it lacks it (before it is allocated or reserved)."""
        if names.CLAIM_FINALIZER in (claim["metadata"].get("finalizers") or []):
            return claim
        claim = await self.kube.json_patch(
            ours("resourceclaims", *key_of(claim)),
            [
                {
                    "op": "test",
                    "path": "/metadata/resourceVersion",
                    "value": claim["metadata"]["resourceVersion"],
                },
                {
                    "op": "add",
                    "path": "/metadata/finalizers",
                    "value": [*(claim["metadata"].get("finalizers") or []), names.CLAIM_FINALIZER],
                },
            ],
        )
        self.state.wrote(CLAIMS, claim)
        return claim

    async def reservation(self, pod: Json, plan: Reservation, node: str | None) -> Json:
        """One status PUT (its resourceVersion the precondition), and the claim's event when it is not the
        Pod's own."""
        path = ours("resourceclaims", *key_of(plan.claim), subresource="status")
        try:
            written = await self.kube.replace(path, plan.new)
        except KubeError as exc:
            if not exc.ambiguous:
                raise
            written = await self._resolve_ambiguous(path, plan, pod, exc)
        self.state.wrote(CLAIMS, written)
        # One event per claim and Pod: Allocated when the devices were chosen now, Reserved when it joins.
        # None for the Pod's own generated claim: the Pod's Allocated event names it and its devices, and its
        # status conditions say the same, so a second event would only cost a write per Pod.
        uid = pod["metadata"]["uid"]
        if not _owned_by(plan.claim, uid):
            if plan.newly:
                allocation = (written.get("status") or {}).get("allocation") or {}
                self.recorder.normal(
                    written,
                    "Allocated",
                    f"allocated {devices_text(allocation)} on node {node}, reserved for pod {name_of(pod)}",
                )
            else:
                consumers = len((written.get("status") or {}).get("reservedFor") or [])
                self.recorder.normal(
                    written, "Reserved", f"reserved for pod {name_of(pod)} ({consumers} consumer(s))"
                )
        log.info("claim reserved", pod=name_of(pod), claim=name_of(plan.claim), newly_allocated=plan.newly)
        return written

    async def _resolve_ambiguous(self, path: str, plan: Reservation, pod: Json, first: KubeError) -> Json:
        """The claim as it is after a reservation write whose outcome is unknown (no answer, or a server
        error: etcd may have committed it all the same); raises when it did not land.

        Until that is known the write's assumption stays: were its devices handed back at once and the write
        landed after all, the next decision could give them to a second claim. So the same write is sent
        again, conditioned on the same resourceVersion, until an answer settles it: it lands (the first did
        not), or it conflicts, and a read shows whether the first landed or another writer came first
        (either way the first can no longer land). The assumption is what every decision reads meanwhile."""
        exc, failures = first, 0
        while True:
            failures += 1
            delay = backoff(failures - 1, TRANSIENT_BACKOFF_CAP) if failures > 1 else 0.0
            log.warning(
                "claim write without a clear answer: its devices stay held until it is settled",
                claim=name_of(plan.claim), error=str(exc), failures=failures, retry_in=delay,
            )  # fmt: skip
            await asyncio.sleep(delay)
            try:
                return await self.kube.replace(path, plan.new)
            except KubeError as again:
                if not (again.ambiguous or again.conflict):
                    raise
                exc = again
            if exc.ambiguous:
                continue
            try:
                current = await self.kube.get(ours("resourceclaims", *key_of(plan.claim)))
            except KubeError as again:
                if not again.ambiguous:
                    raise
                exc = again
                continue
            if current is None:
                raise KubeError(404, "NotFound", f"claim {name_of(plan.claim)} is gone", path=path)
            self.state.wrote(CLAIMS, current)  # the truth replaces the assumption, whoever wrote it
            reserved = pod["metadata"]["uid"] in reserved_uids(current)
            if reserved and (current.get("status") or {}).get("allocation"):
                return current  # the Pod is placed with what the claim holds (the API server's own form)
            raise KubeError(409, "Conflict", f"claim {name_of(plan.claim)} was written by another", path=path)

    async def delete_generated(self, claim: Json) -> None:
        """Delete a generated claim (of an ended Pod, or a duplicate), our finalizer first; release its
        devices once it is gone."""
        meta = claim["metadata"]
        allocated = bool((claim.get("status") or {}).get("allocation"))
        if names.CLAIM_FINALIZER in (meta.get("finalizers") or []):
            claim = await self.drop_finalizer(claim)
        if not is_deleting(claim):
            await self.kube.delete(
                ours("resourceclaims", meta["namespace"], meta["name"]), preconditions={"uid": meta["uid"]}
            )
            self.state.deleted(CLAIMS, claim)
            log.info("generated claim deleted", claim=f"{meta['namespace']}/{meta['name']}")
        if allocated:
            metrics.RELEASES.inc()
            self.released()

    async def drop_finalizer(self, claim: Json) -> Json:
        """`claim` without our finalizer (a JSON patch conditioned on its resourceVersion)."""
        meta = claim["metadata"]
        written = await self.kube.json_patch(
            ours("resourceclaims", meta["namespace"], meta["name"]),
            [
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
                {
                    "op": "replace",
                    "path": "/metadata/finalizers",
                    "value": [f for f in meta.get("finalizers") or [] if f != names.CLAIM_FINALIZER],
                },
            ],
        )
        if written.get("metadata"):
            self.state.wrote(CLAIMS, written)
            return written
        return claim

    async def rejected_condition(self, claim: Json, reason: str, message: str) -> None:
        """Merge-patch a WriteRejected=True condition into the claim's status (unless it says so already)."""
        status = claim.get("status") or {}
        conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
        current = next((c for c in conditions if c.get("type") == WRITE_REJECTED), None)
        if current and current.get("reason") == reason and current.get("message") == message:
            return  # its watch event would only bring this item back: write nothing
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        condition = {
            "type": WRITE_REJECTED,
            "status": "True",
            "reason": reason,
            "message": message[:1024],
            "lastTransitionTime": (current or {}).get("lastTransitionTime") or now,
        }
        rest = [c for c in conditions if c.get("type") != WRITE_REJECTED]
        try:
            written = await self.kube.merge_patch(
                ours("resourceclaims", *key_of(claim), subresource="status"),
                {"status": {"conditions": [*rest, condition]}},
            )
        except KubeError as exc:  # the report is best effort; the event and the log carry it too
            log.warning("condition not written", claim=name_of(claim), error=str(exc))
            return
        if written.get("metadata"):
            self.state.wrote(CLAIMS, written)
