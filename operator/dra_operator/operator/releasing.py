"""Release, the claim items of the reconciler's queue: what becomes of a claim once its consumers change.
Consumers that ended or vanished are dropped, a claim nobody uses any more is deallocated, and a generated
claim whose Pod ended, or a duplicate of one, is deleted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dra_operator.admission import names
from dra_operator.operator.claimwrites import ClaimWrites
from dra_operator.operator.placement import (
    controller_uid,
    is_deleting,
    is_done,
    is_generated_for,
    reserved_uids,
)
from dra_operator.operator.state import CLAIMS, PODS, Json, State, key_of
from dra_operator.operator.workqueue import CLAIM


def generated_for(state: State, namespace: str, uid: str, pod_claim: str | None) -> list[Json]:
    """The claims of `namespace` generated for the Pod with this uid and this Pod claim name."""
    return [
        c
        for c in state.claims_of(uid)
        if c["metadata"].get("namespace") == namespace and is_generated_for(c, uid, pod_claim)
    ]


@dataclass
class Releaser:
    state: State
    writes: ClaimWrites
    #: The reconciler's decision lock (see `sync`).
    decide: asyncio.Lock
    #: Queues an item of the reconciler: (kind, namespace, name).
    enqueue: Callable[[str, str, str], None]

    async def sync(self, namespace: str, name: str) -> None:
        """Drop consumers that ended or vanished; deallocate an unused claim; delete ended Pods' claims and
        duplicates.

        Under the decision lock, like allocation: a release decided between another Pod's allocation and
        its reservation of this claim would leave that Pod's claims on different nodes. The claim of an ended
        Pod is deleted once the lock is released: its devices stay in use for every decision until the
        deletion is done, and a Pod that reserves it meanwhile (by name) makes one of the two writes fail on
        the claim's resourceVersion. So decisions do not wait behind the two writes of every ended Pod's
        clean-up, and the clean-ups of many Pods overlap."""
        async with self.decide:
            unneeded = await self._sync(namespace, name)
        if unneeded is not None:
            await self.writes.delete_generated(unneeded)

    async def _sync(self, namespace: str, name: str) -> Json | None:
        """What can be decided and written under the lock; returns a generated claim nothing needs any more
        (its Pod ended, or a duplicate), to delete. A claim nobody uses yet gets no write: it reads `pending`
        by the CRD's status default."""
        claim = self.state.get(CLAIMS, (namespace, name))
        if claim is None:
            return None
        meta, status = claim["metadata"], claim.get("status") or {}
        reserved = list(status.get("reservedFor") or [])
        keep = [r for r in reserved if r.get("resource") != "pods" or self._pod_alive(namespace, r)]
        owner = controller_uid(claim)
        generated = owner is not None and names.POD_CLAIM_NAME_ANNOTATION in (meta.get("annotations") or {})
        owner_gone = generated and not self._pod_alive(namespace, {"uid": owner})
        finalized = names.CLAIM_FINALIZER in (meta.get("finalizers") or [])
        allocated = bool(status.get("allocation"))

        if generated and owner_gone and not keep:
            # The claim of an ended or deleted Pod: delete it (no point clearing its status first).
            return claim
        if generated and not reserved and not allocated and self._superseded(claim, str(owner)):
            # A duplicate (see Reconciler._generated_claim) that the Pod's pass did not see before it was
            # placed with the other: nothing holds it, and it would otherwise stay until the Pod ends.
            return claim
        if generated and any(r.get("uid") == owner for r in keep):
            # This one is the Pod's: a duplicate whose own sync came before this reservation was not
            # superseded then. Its sync again now finds it so.
            for sibling in self._stray_siblings(claim, str(owner)):
                self.enqueue(CLAIM, *key_of(sibling))

        deallocated = False
        if keep != reserved or (not keep and allocated):
            deallocated = not keep and allocated
            claim = await self.writes.consumers(claim, keep, "no consumer left")
            allocated = not deallocated

        if finalized and not keep and not allocated and (deallocated or is_deleting(claim)):
            # Nothing runs on it and nothing is allocated: the finalizer has nothing left to protect. (A new
            # generated claim keeps the finalizer it was born with until its Pod is done with it.)
            claim = await self.writes.drop_finalizer(claim)
        return None

    def _siblings(self, claim: Json, owner: str) -> list[Json]:
        """The other claims generated for the same Pod claim as `claim` (its Pod's uid: `owner`)."""
        meta = claim["metadata"]
        pod_claim = (meta.get("annotations") or {}).get(names.POD_CLAIM_NAME_ANNOTATION)
        return [
            other
            for other in generated_for(self.state, str(meta.get("namespace")), owner, pod_claim)
            if other["metadata"].get("name") != meta.get("name")
        ]

    def _stray_siblings(self, claim: Json, owner: str) -> list[Json]:
        """The siblings that nothing holds: neither reserved nor allocated, nor being deleted."""
        return [
            other
            for other in self._siblings(claim, owner)
            if not reserved_uids(other)
            and not (other.get("status") or {}).get("allocation")
            and not is_deleting(other)
        ]

    def _superseded(self, claim: Json, owner: str) -> bool:
        """Whether a sibling is reserved for the Pod."""
        return any(owner in reserved_uids(other) for other in self._siblings(claim, owner))

    def _pod_alive(self, namespace: str, ref: Mapping[str, Any]) -> bool:
        """Whether the consumer Pod (by uid, and name when given) still exists and has not ended."""
        uid = ref.get("uid")
        name = ref.get("name")
        candidates = (
            [self.state.get(PODS, (namespace, str(name)))] if name else [self.state.pod_by_uid(str(uid))]
        )
        for pod in candidates:
            if pod is not None and pod["metadata"].get("uid") == uid:
                return not is_done(pod)
        return False
