"""The structured allocator: one Pod's claims and a snapshot in, an allocation or a reason out.

Public API (no I/O; Kubernetes `resource.k8s.io/v1` semantics of the 1.36 structured allocator):

    snapshot = Snapshot.build(classes, slices, nodes=None, claims=(), cache=None)
        classes: DeviceClass models; slices: ResourceSlice models; nodes: `Node(name, labels)` values, or
        None to derive them from the slices' nodeName; claims: every ResourceClaim, those with
        `status.allocation` mark their devices in use (adminAccess results excepted). `cache`: a
        `SelectorCache` to share CEL results across snapshots (keyed by expression and slice
        uid/resourceVersion/pool generation/device).

    outcome = allocate(snapshot, PodRef(namespace, name, uid), claims, nodes=None)
        claims: the Pod's ResourceClaims in Pod order (allocated ones are reused and restrict the node).
        -> Allocation(node_name, results: {(namespace, name): AllocationResult}, reused: (keys, ...))
           each AllocationResult is ready for `status.allocation` (results, config, nodeSelector);
        -> Unallocatable(explanation): `explanation.render()` (lines, for simulate), `.summary()` (one
           line for the AllocationFailed event), `.fatal` / `.nodes[i].reasons` (structured, `explain`).

    allocation.commit(snapshot)                    after writing: the devices become in use for the next Pod
    snapshot.record_allocation((ns, name), result) a claim allocated elsewhere (watch event)
    snapshot.release((ns, name))                   a claim deallocated

For a long-running caller, `SnapshotKeeper(cache).snapshot(classes, slices, nodes, claims)` returns one
snapshot kept current: rebuilt only when classes, slices or nodes change (uid/resourceVersion), claim
allocations applied as differences; `keeper.assume(allocation)` keeps an allocation's devices in use until
the claims show it (the watch lags the write), `keeper.forget((ns, name))` drops it after a failed write.

Deterministic: nodes in name order, pools by (driver, pool), slices by name, devices in slice order; the
first node with a complete solution wins.
"""

from dra_operator.allocation.explain import Explanation, NodeFailure
from dra_operator.allocation.keeper import SnapshotKeeper
from dra_operator.allocation.nodes import Node
from dra_operator.allocation.search import RESULTS_MAX, Allocation, Outcome, PodRef, Unallocatable, allocate
from dra_operator.allocation.selectors import SelectorCache, SelectorFailure
from dra_operator.allocation.snapshot import ClaimKey, DeviceID, Snapshot, claim_key

__all__ = [
    "RESULTS_MAX",
    "Allocation",
    "ClaimKey",
    "DeviceID",
    "Explanation",
    "Node",
    "NodeFailure",
    "Outcome",
    "PodRef",
    "SelectorCache",
    "SelectorFailure",
    "Snapshot",
    "SnapshotKeeper",
    "Unallocatable",
    "allocate",
    "claim_key",
]
