"""One snapshot kept current across allocations: rebuilt only when classes, slices or nodes change.

The operator allocates Pod after Pod from watch caches. Rebuilding a snapshot for every Pod costs time in the
number of devices; this keeper rebuilds only when a DeviceClass, ResourceSlice or the node set changes (by uid
and resourceVersion) and applies claim allocations as differences. Allocations it was told about with
`assume` stay in use until the claims show them (the watch lags the write) or `forget` drops them, so two
Pods never get the same device in the meantime, as kube-scheduler's in-flight allocations prevent.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from dra_operator.allocation.nodes import Node
from dra_operator.allocation.search import Allocation
from dra_operator.allocation.selectors import SelectorCache
from dra_operator.allocation.snapshot import ClaimKey, Snapshot, claim_key
from dra_operator.api.resource import AllocationResult, DeviceClass, ResourceClaim, ResourceSlice


def _version(obj: DeviceClass | ResourceSlice) -> Hashable:
    meta = obj.metadata
    if meta.resource_version:
        return (meta.uid or obj.name, meta.resource_version)
    return ("object", id(obj))


class SnapshotKeeper:
    def __init__(self, cache: SelectorCache | None = None) -> None:
        self.cache = cache if cache is not None else SelectorCache()
        self._snapshot: Snapshot | None = None
        self._key: Hashable = None
        self._identities: Hashable = None
        self._anchors: tuple[object, ...] = ()
        self._assumed: dict[ClaimKey, AllocationResult] = {}
        self._confirmed: dict[ClaimKey, AllocationResult] = {}
        self.rebuilds = 0

    def snapshot(
        self,
        classes: Iterable[DeviceClass],
        slices: Iterable[ResourceSlice],
        nodes: Iterable[Node] | None,
        claims: Iterable[ResourceClaim],
    ) -> Snapshot:
        """The snapshot for these objects; `claims` are all claims (allocated ones make devices in use)."""
        classes, slices = list(classes), list(slices)
        node_list = None if nodes is None else list(nodes)
        nodes_key = (
            None
            if node_list is None
            else tuple(sorted((n.name or "", tuple(sorted(n.labels.items()))) for n in node_list))
        )
        # The same objects as last time (a cache of parsed models hands them out): no need to look closer.
        identities = (tuple(map(id, classes)), tuple(map(id, slices)), nodes_key)
        if self._snapshot is not None and identities == self._identities:
            self._sync(self._snapshot, claims)
            return self._snapshot
        key = (frozenset(_version(c) for c in classes), frozenset(_version(s) for s in slices), nodes_key)
        self._identities = identities
        if self._snapshot is None or key != self._key:
            self._snapshot = Snapshot.build(classes, slices, node_list, cache=self.cache)
            self.cache.retain(self._snapshot.tokens())
            self._key = key
            self._confirmed = {}
            self.rebuilds += 1
        # Objects whose id() is part of a key stay alive as long as the key is used.
        self._anchors = (*classes, *slices)
        self._sync(self._snapshot, claims)
        return self._snapshot

    def _sync(self, snapshot: Snapshot, claims: Iterable[ResourceClaim]) -> None:
        truth: dict[ClaimKey, AllocationResult] = {}
        for claim in claims:
            if claim.status is not None and claim.status.allocation is not None:
                truth[claim_key(claim)] = claim.status.allocation
        for key in list(self._assumed):
            if key in truth:
                del self._assumed[key]  # the write is visible now
        wanted = {**truth, **self._assumed}
        for key in [k for k in snapshot.allocated_claims() if k not in wanted]:
            snapshot.release(key)
        confirmed = self._confirmed
        for key in [k for k in confirmed if k not in wanted]:
            del confirmed[key]
        for key, allocation in wanted.items():
            if confirmed.get(key) is allocation:
                continue
            known = snapshot.allocation_of(key)
            if known is None or (known is not allocation and known.to_dict() != allocation.to_dict()):
                snapshot.record_allocation(key, allocation)
            # Compared once per object: an unchanged claim costs a dictionary lookup on later calls.
            confirmed[key] = allocation

    def assume(self, allocation: Allocation) -> None:
        """The allocation is being written: keep its devices in use until the claims show it."""
        for key, result in allocation.results.items():
            self._assumed[key] = result
            if self._snapshot is not None:
                self._snapshot.record_allocation(key, result)

    def forget(self, key: ClaimKey) -> None:
        """The write of an assumed allocation failed (or the claim is gone): free its devices."""
        if self._assumed.pop(key, None) is not None and self._snapshot is not None:
            self._snapshot.release(key)
