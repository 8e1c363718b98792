"""The operator's view of the cluster: the caches filled by watches (our informers' and Kopf's indexes, of one
shape) overlaid with our own writes.

The caches lag our writes by one watch event. The allocator must never see a device as free because the
claim we just allocated has not come back through the watch yet, so every object we write is kept here until
the index holds the same or a newer resourceVersion (etcd revisions, compared as integers).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from sys import intern
from typing import Any

from dra_operator.admission.delivery import node_of
from dra_operator.api.gang import gang_of
from dra_operator.api.sharing import copy_on_write_tree, interned, shared_tree
from dra_operator.operator.placement import is_gated
from dra_operator.operator.slices import CachedSlice, cached_slice

Json = dict[str, Any]
Key = tuple[str, str]  # (namespace or "", name)

#: Cache ids (for the kinds Kopf indexes, the kwarg names its handlers receive them under).
CLASSES, SLICES, CLAIMS, TEMPLATES, PODS, NODES, TAINT_RULES = (
    "dra_classes",
    "dra_slices",
    "dra_claims",
    "dra_templates",
    "dra_pods",
    "dra_nodes",
    "dra_taint_rules",
)
INDEXES = (CLASSES, SLICES, CLAIMS, TEMPLATES, PODS, NODES, TAINT_RULES)


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def name_of(obj: Mapping[str, Any]) -> str:
    """`namespace/name`, for logs and messages."""
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


#: How long a deleted object's end is remembered against late answers to our writes: longer than any request
#: may take (the API client gives up after 30 s).
GONE_SECONDS = 120.0


def _rv(obj: Mapping[str, Any] | None) -> int:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


#: What no decision reads and the API server repeats in every object: who wrote which field, and kubectl's
#: copy of the whole applied object. Our writes of whole objects go to the status subresource, which ignores
#: metadata, so a cached object without them is safe to write back.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
#: The fields of a claim's status while it waits for a Pod: neither allocated nor reserved.
_WAITING_STATUS = frozenset({"state", "conditions"})
#: Container fields no decision reads (the name, resources and env, which delivery reads, stay).
_CONTAINER_FIELDS_DROPPED = (
    "args",
    "command",
    "image",
    "imagePullPolicy",
    "lifecycle",
    "livenessProbe",
    "ports",
    "readinessProbe",
    "securityContext",
    "startupProbe",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "volumeDevices",
    "volumeMounts",
    "workingDir",
)


def _slim_container(container: Any) -> Any:
    if not isinstance(container, Mapping):
        return container
    return {k: v for k, v in container.items() if k not in _CONTAINER_FIELDS_DROPPED}


def slim(kind: str, obj: Mapping[str, Any], held: Mapping[str, Any] | None = None) -> Json:
    """`obj` without what no decision reads, for the caches: managedFields and kubectl's last-applied copy
    everywhere; a Pod's volumes, its containers' images, commands, probes and mounts, and its container
    statuses. Every key and string is held once (api.sharing.interned). A slice is parsed here, once, and
    holds its devices as models only; one whose spec is that of `held` (its cached version: only its status
    changed) keeps `held`'s (operator.slices). The objects at 10,000 Pods and claims are most of the
    operator's memory (issue 14)."""
    if kind == SLICES:
        return cached_slice(_slimmed(kind, obj), held)
    return {intern(key): interned(item) for key, item in _slimmed(kind, obj).items()}


def _slimmed(kind: str, obj: Mapping[str, Any]) -> Json:
    kept = dict(obj)
    meta = obj.get("metadata")
    if isinstance(meta, Mapping):
        meta = {k: v for k, v in meta.items() if k != "managedFields"}
        annotations = meta.get("annotations")
        if isinstance(annotations, Mapping) and LAST_APPLIED in annotations:
            meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
        kept["metadata"] = meta
    if kind == CLAIMS:
        # A claim's spec is immutable (as in Kubernetes): claims from one template or manifest share one.
        if "spec" in obj:
            kept["spec"] = shared_tree(obj["spec"])
        # The status of a claim that waits for a Pod (its state and two conditions: 620 bytes) is the same
        # for every claim written in the same second; it is shared until the operator changes it, by copy.
        status = obj.get("status")
        if isinstance(status, Mapping) and status.keys() <= _WAITING_STATUS:
            kept["status"] = copy_on_write_tree(status)
        return kept
    if kind != PODS:
        return kept
    spec = obj.get("spec")
    if isinstance(spec, Mapping):
        spec = {k: v for k, v in spec.items() if k != "volumes"}
        for field in ("containers", "initContainers"):
            if isinstance(spec.get(field), list):
                spec[field] = [_slim_container(c) for c in spec[field]]
        kept["spec"] = spec
    status = obj.get("status")
    if isinstance(status, Mapping):
        kept["status"] = {
            k: v
            for k, v in status.items()
            if k not in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")
        }
    return kept


def _related_uids(claim: Mapping[str, Any]) -> set[str]:
    """The Pods a claim belongs to or serves: its controller owner and its reservedFor consumers."""
    meta = claim.get("metadata") or {}
    uids = {str(r.get("uid")) for r in meta.get("ownerReferences") or [] if r.get("controller")}
    uids.update(str(r.get("uid")) for r in (claim.get("status") or {}).get("reservedFor") or [])
    return uids


class State:
    """Read access to indexed objects by kind, with our fresher writes on top.

    Lookups by Pod uid spare the per-Pod scans over every claim and Pod: the claims related to a Pod (owned
    by it or reserved for it) and the Pod itself; others find a gang's Pods and the Pods on a node. They are
    kept by `note`, which the watch handlers call for every object the caches take in (so they move with the
    caches, event by event) and our writes call too; they may hold stale keys (an object changed or gone),
    which every lookup filters out.
    """

    def __init__(self) -> None:
        self.indexes: Mapping[str, Any] | None = None
        # kind -> key -> our last written object, or None for "we deleted it" (with the rv it had then)
        self._overlay: dict[str, dict[Key, tuple[int, Json | None]]] = {name: {} for name in INDEXES}
        # kind -> key -> what the object will be once our write in flight lands (see `assume`)
        self._assumed: dict[str, dict[Key, tuple[int, Json]]] = {name: {} for name in INDEXES}
        self._assumptions = itertools.count(1)
        # kind -> key -> (the resourceVersion at which the watch saw it deleted, when), oldest first: an
        # answer to our write that arrives after its object's DELETED event must not bring the object back
        self._gone: dict[str, dict[Key, tuple[int, float]]] = {name: {} for name in INDEXES}
        self._claims_by_pod: dict[str, set[Key]] = {}
        self._pod_by_uid: dict[str, Key] = {}
        self._gangs: dict[tuple[str, str], set[Key]] = {}  # (namespace, gang key) -> Pod keys
        self._gated: set[Key] = set()  # Pods last seen with our scheduling gate
        self._on_node: dict[str, set[Key]] = {}  # node -> Pods last seen bound or pinned to it
        # The change journal: per kind, each key touched with the revision of its last change, oldest first,
        # so a reader keeping a cursor (the allocator's view of the devices in use) catches up in O(changes).
        # `epoch` moves when the caches are rebound or the journal is trimmed: a cursor from before is void.
        self.epoch = 0
        self._revision = 0
        self._changed: dict[str, dict[Key, int]] = {name: {} for name in INDEXES}

    def note(self, kind: str, obj: Mapping[str, Any]) -> None:
        """Keep the uid lookups current for an object seen (indexed or written by us)."""
        if kind == CLAIMS:
            key = key_of(obj)
            for uid in _related_uids(obj):
                self._claims_by_pod.setdefault(uid, set()).add(key)
        elif kind == PODS:
            pod_uid = (obj.get("metadata") or {}).get("uid")
            if pod_uid:
                self._pod_by_uid[str(pod_uid)] = key_of(obj)
            gang = gang_of(obj.get("metadata") or {})
            if gang is not None:
                key = key_of(obj)
                self._gangs.setdefault((key[0], gang.key), set()).add(key)
            if is_gated(obj):
                self._gated.add(key_of(obj))
            else:
                self._gated.discard(key_of(obj))
            node = node_of(obj)
            if node is not None:
                self._on_node.setdefault(node, set()).add(key_of(obj))

    def touch(self, kind: str, key: Key) -> None:
        """Record that the object at `key` changed: after the cache holds the change (the watch handlers call
        this once their event is stored), or after our write."""
        self._revision += 1
        changed = self._changed[kind]
        changed.pop(key, None)
        changed[key] = self._revision
        live = len(self._overlay[kind]) + self._indexed_count(kind)
        if len(changed) > max(4096, 2 * live):
            # Keys of objects long gone pile up: keep the newest half and void older cursors.
            for old in list(changed)[: len(changed) // 2]:
                del changed[old]
            self.epoch += 1

    def changes(self, kind: str, since: int) -> tuple[int, list[Key]]:
        """The current revision and the keys of `kind` changed after revision `since`, oldest first."""
        found: list[Key] = []
        for key, revision in reversed(self._changed[kind].items()):
            if revision <= since:
                break
            found.append(key)
        found.reverse()
        return self._revision, found

    @property
    def revision(self) -> int:
        """The journal's revision now: a cursor taken here sees, through `changes`, every change after it."""
        return self._revision

    def revision_of(self, kind: str) -> int:
        """The revision of the latest change of `kind` (0: none journaled)."""
        return next(reversed(self._changed[kind].values()), 0)

    def _indexed_count(self, kind: str) -> int:
        return len(self.indexes[kind]) if self.indexes is not None else 0

    def forget_pod(self, pod: Mapping[str, Any]) -> None:
        """A Pod is gone for good: drop its lookups (its claims are reached through their own events)."""
        metadata = pod.get("metadata") or {}
        uid = str(metadata.get("uid"))
        self._gated.discard(key_of(pod))
        node = node_of(pod)
        if node is not None and node in self._on_node:
            self._on_node[node].discard(key_of(pod))
            if not self._on_node[node]:
                del self._on_node[node]
        self._claims_by_pod.pop(uid, None)
        self._pod_by_uid.pop(uid, None)
        gang = gang_of(metadata)
        if gang is not None:
            key = key_of(pod)
            members = self._gangs.get((key[0], gang.key))
            if members is not None:
                members.discard(key)
                if not members:
                    del self._gangs[(key[0], gang.key)]

    def claims_of(self, uid: str) -> list[Json]:
        """The claims owned by, or reserved for, the Pod with this uid."""
        found = []
        for key in list(self._claims_by_pod.get(uid, ())):
            claim = self.get(CLAIMS, key)
            if claim is not None and uid in _related_uids(claim):
                found.append(claim)
        return found

    def gang_pods(self, namespace: str, gang_key: str) -> list[Json]:
        """The Pods of one namespace that belong to the gang `gang_key` now (by name).

        A member missing from the cache is skipped, not dropped. Members leave when their Pod is deleted
        (`forget_pod`) or names another gang."""
        found = []
        members = self._gangs.get((namespace, gang_key), set())
        for key in sorted(members):
            pod = self.get(PODS, key)
            if pod is None:
                continue
            gang = gang_of(pod.get("metadata") or {})
            if gang is not None and gang.key == gang_key:
                found.append(pod)
            else:
                members.discard(key)
        return found

    def gated_pods(self, namespace: str | None = None) -> list[Json]:
        """The Pods (of one namespace) that carry our scheduling gate now, without a pass over every Pod: a
        freed device wakes the waiting Pods, and at 10,000 Pods most of them are not."""
        found = []
        for key in list(self._gated):
            if namespace is not None and key[0] != namespace:
                continue
            pod = self.get(PODS, key)
            if pod is None:
                continue  # noted by the index function, not stored yet (or gone: forget_pod drops it)
            if is_gated(pod):
                found.append(pod)
            else:
                self._gated.discard(key)
        return found

    def pods_on(self, node: str) -> list[Json]:
        """The Pods bound or pinned to `node` now, without a pass over every Pod (the device plugin's delivery
        looks at one node's Pods for each Pod it ungates)."""
        found = []
        keys = self._on_node.get(node, set())
        for key in list(keys):
            pod = self.get(PODS, key)
            if pod is None:
                continue  # noted by the index function, not stored yet (or gone: forget_pod drops it)
            if node_of(pod) == node:
                found.append(pod)
            else:
                keys.discard(key)  # it moved
        if node in self._on_node and not keys:
            del self._on_node[node]
        return found

    def pod_by_uid(self, uid: str) -> Json | None:
        key = self._pod_by_uid.get(uid)
        pod = self.get(PODS, key) if key is not None else None
        return pod if pod is not None and (pod.get("metadata") or {}).get("uid") == uid else None

    def reindex(self) -> None:
        """Rebuild the uid lookups from the indexes (at bind, and for callers that fill indexes by hand)."""
        self._claims_by_pod.clear()
        self._pod_by_uid.clear()
        self._gangs.clear()
        self._gated.clear()
        self._on_node.clear()
        self.epoch += 1
        for kind in (CLAIMS, PODS):
            for obj in self.all(kind):
                self.note(kind, obj)

    @property
    def bound(self) -> bool:
        return self.indexes is not None

    def bind(self, indexes: Mapping[str, Any]) -> None:
        """Keep the caches by kind (long-lived: Kopf hands its handlers the same index objects every time, and
        an informer keeps one store)."""
        if self.indexes is None and all(name in indexes for name in INDEXES):
            self.indexes = {name: indexes[name] for name in INDEXES}
            self.reindex()

    def _indexed(self, kind: str, key: Key) -> Json | None:
        if self.indexes is None:
            return None
        index = self.indexes[kind]
        if key not in index:
            return None
        for value in index[key]:
            # A copy, against a reader changing what the index holds; but a slice's would lose its parsed
            # model (operator.slices), and no reader changes a slice.
            return value if isinstance(value, CachedSlice) else dict(value)
        return None

    def get(self, kind: str, key: Key) -> Json | None:
        assumed = self._assumed[kind].get(key)
        if assumed is not None:
            return assumed[1]
        indexed = self._indexed(kind, key)
        written = self._overlay[kind].get(key)
        if written is None:
            return indexed
        rv, obj = written
        if obj is None and indexed is None:
            del self._overlay[kind][key]  # gone from the index too: nothing left to hide
            return None
        if indexed is not None and (_rv(indexed) > rv or (obj is not None and rv > 0 and _rv(indexed) == rv)):
            del self._overlay[kind][key]  # the watch caught up with our write (or went past it)
            return indexed
        return obj

    def settle(self, kind: str, key: Key) -> None:
        """The index has just stored a watch event at `key`: drop our written copy if the index caught up
        with it, so that an object is not held twice (at 10,000 claims and 5,000 slices, every one we wrote
        was: nothing read it again to prune it)."""
        if key in self._overlay[kind]:
            self.get(kind, key)

    def all(self, kind: str, ordered: bool = False) -> Iterator[Json]:
        """Every object of `kind`; by (namespace, name) when `ordered` (a sort costs n log n per call, which
        per-Pod scans over thousands of claims cannot afford)."""
        keys: set[Key] = set(self._overlay[kind])
        keys.update(self._assumed[kind])
        if self.indexes is not None:
            keys.update(self.indexes[kind])
        for key in sorted(keys) if ordered else keys:
            obj = self.get(kind, key)
            if obj is not None:
                yield obj

    def wrote(self, kind: str, obj: Json, *, journal: bool = True) -> None:
        """Remember an object as the API server returned it from our write. One our write left with a
        deletionTimestamp and no finalizer is gone from the cluster: remembered as deleted (its watch event
        may have come before this answer, and nothing would replace it in the overlay afterwards).
        `journal=False`: a write no reader of the journal cares about (a slice's status, which no decision
        reads), so that it does not make every next decision gather the slices again."""
        key = key_of(obj)
        gone = self._gone[kind].get(key)
        if gone is not None:
            if _rv(obj) <= gone[0]:
                return  # the answer came after the watch reported the object deleted: it is no more
            del self._gone[kind][key]  # a new object of the same name
        meta = obj.get("metadata") or {}
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self.deleted(kind, obj)
            return
        obj = slim(kind, obj, self.get(kind, key) if kind == SLICES else None)
        held = self._assumed[kind].get(key)
        if held is not None and _rv(obj) > _rv(held[1]):
            # Newer than the version the assumed write is conditioned on: that write landed (this is its
            # answer, or a read that includes it) or can no longer land. A read of that very version (after
            # another decision's write of the same claim conflicted) leaves the assumption: its write is still
            # in flight, and dropping it would hand its devices to the next decision while it lands.
            del self._assumed[kind][key]
        self._overlay[kind][key] = (_rv(obj), obj)
        self.note(kind, obj)
        if journal:
            self.touch(kind, key)

    def assume(self, kind: str, obj: Json) -> Callable[[], None]:
        """Hold `obj` as what its object will be once our write of it lands, as the scheduler assumes a Pod
        bound before its binding is written: every read sees it at once (the next allocation decision must
        not hand its devices out again), so decisions need not wait for the write's round trip. `wrote`
        (the write's answer) or `deleted`/`forget` replace it; the returned undo drops it, for a write that
        failed."""
        key = key_of(obj)
        held = (next(self._assumptions), obj)
        self._assumed[kind][key] = held
        self.note(kind, obj)
        self.touch(kind, key)

        def undo() -> None:
            if self._assumed[kind].get(key) is held:
                del self._assumed[kind][key]
                self.touch(kind, key)

        return undo

    def assumption(self, kind: str, obj: Mapping[str, Any]) -> int | None:
        """The serial number of the assumption `obj` is (None: it is no assumed object). An assumed object
        keeps the resourceVersion its write is conditioned on, so a cache keyed by resourceVersion (the
        allocator's parsed models) must key it by this too: the same version may be assumed twice, with
        different devices."""
        held = self._assumed[kind].get(key_of(obj))
        return held[0] if held is not None and held[1] is obj else None

    def deleted(self, kind: str, obj: Json) -> None:
        """Remember that we deleted an object (it vanishes from reads at once)."""
        self._assumed[kind].pop(key_of(obj), None)
        self._overlay[kind][key_of(obj)] = (_rv(obj), None)
        self.touch(kind, key_of(obj))

    def forget(self, kind: str, key: Key, last: Mapping[str, Any] | None = None) -> None:
        """The watch reported the object gone: drop any overlay entry too. `last`: the object as the DELETED
        event carried it, whose resourceVersion is where it ended; an answer to our write that was in flight
        meanwhile (a Pod's ungating, a claim's status) may be read after the event, and `wrote` then drops it
        instead of holding a ghost of the object (a Pod that looks alive keeps its claims for good)."""
        self._overlay[kind].pop(key, None)
        self._assumed[kind].pop(key, None)
        if last is not None:
            gone, now = self._gone[kind], time.monotonic()
            gone.pop(key, None)
            gone[key] = (_rv(last), now)
            while now - next(iter(gone.values()))[1] > GONE_SECONDS:
                del gone[next(iter(gone))]
        self.touch(kind, key)
