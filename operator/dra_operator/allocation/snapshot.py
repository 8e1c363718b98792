"""The allocator's view of the cluster: classes, slices grouped into pools, nodes, and the devices in use.

A snapshot is built once from the objects and then used incrementally: the operator allocates Pod after Pod
and records each allocation (`record_allocation`), so the in-use set grows without a rebuild; `release` undoes
one; `replace_node_slices` swaps in a node's republished slices. Per request signature the nodes are also
kept ranked by their free candidates (`ranked`), so that binpack and spread find the best-ranked node without
counting every node's devices for each decision. Per node, the visible pools follow
Kubernetes' GatherPools (1.36): only the highest generation counts, a pool whose slice count differs from
`resourceSliceCount` is incomplete, a pool with duplicate device names is invalid, pools are ordered by
(driver, pool), slices by name, devices in slice order. Per request signature and node, the devices that the
search can ever pick are computed once (selector results come from the shared `SelectorCache`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple, TypeAlias

from dra_operator.allocation.capacity import fits as capacity_fits
from dra_operator.allocation.nodes import Node, selector_matches
from dra_operator.allocation.selectors import Result, SelectorCache, SelectorFailure
from dra_operator.api.quantity import Quantity
from dra_operator.api.resource import (
    AllocationResult,
    CounterSet,
    Device,
    DeviceAttribute,
    DeviceClass,
    DeviceTaint,
    DeviceToleration,
    NodeSelector,
    ResourceClaim,
    ResourceSlice,
)
from dra_operator.cel import CelDevice

SHARED_CANDIDATES = 1 << 30
"""What `free_candidates` says when a shared device is a candidate: it never limits how many fit."""

DeviceID = tuple[str, str, str]
"""(driver, pool, device): how Kubernetes identifies a device across slices and claims."""

ClaimKey = tuple[str, str]
"""(namespace, name) of a ResourceClaim."""

# Scopes of a slice, from its spec (exactly one is set on a valid slice).
SCOPE_NODE, SCOPE_ALL, SCOPE_SELECTOR, SCOPE_PER_DEVICE, SCOPE_COUNTERS, SCOPE_UNKNOWN = (
    "node",
    "all",
    "selector",
    "per-device",
    "counters",
    "unknown",
)


TolerationKey = tuple[str, str, str, str]
"""(key, operator, value, effect) of a DeviceToleration, "" for unset."""


def tolerates(toleration: TolerationKey, taint: DeviceTaint) -> bool:
    """Kubernetes' ToleratesTaint for devices: effect and key must match when set; Equal compares values."""
    key, operator, value, effect = toleration
    if effect and effect != taint.effect:
        return False
    if key and key != taint.key:
        return False
    if operator == "Exists":
        return True
    return value == (taint.value or "")


class RequestSignature(NamedTuple):
    """What decides whether a device can serve a request: class and request selectors, tolerations.

    A tuple, so that the many dictionary lookups keyed by it compare in C."""

    class_name: str
    class_expressions: tuple[str, ...]
    request_expressions: tuple[str, ...]
    tolerations: tuple[TolerationKey, ...] = ()
    capacity: tuple[tuple[str, Quantity], ...] = ()  # capacity.requests (consumable capacity)

    @property
    def capacity_requests(self) -> dict[str, Quantity] | None:
        return dict(self.capacity) if self.capacity else None

    @property
    def expressions(self) -> tuple[str, ...]:
        return self.class_expressions + self.request_expressions

    def blocked_by_taint(self, taints: Sequence[DeviceTaint]) -> bool:
        """An untolerated NoSchedule or NoExecute taint keeps the device from being allocated."""
        for taint in taints:
            if taint.effect not in ("NoSchedule", "NoExecute"):
                continue
            if not any(tolerates(t, taint) for t in self.tolerations):
                return True
        return False


def toleration_key(tolerations: Iterable[DeviceToleration] | None) -> tuple[TolerationKey, ...]:
    return tuple(
        (t.key or "", t.operator or "Equal", t.value or "", t.effect or "") for t in tolerations or ()
    )


@dataclass(slots=True)
class _FreeRanks:
    """One ranking's value per node position (see `RankKey`), and the positions grouped by that value."""

    counts: list[int]
    by_count: dict[int, set[int]]

    @classmethod
    def of(cls, counts: list[int]) -> _FreeRanks:
        by_count: dict[int, set[int]] = {}
        for position, count in enumerate(counts):
            by_count.setdefault(count, set()).add(position)
        return cls(counts, by_count)

    def move(self, position: int, count: int) -> None:
        old = self.counts[position]
        if old == count:
            return
        group = self.by_count[old]
        group.discard(position)
        if not group:
            del self.by_count[old]
        self.by_count.setdefault(count, set()).add(position)
        self.counts[position] = count


RankKey: TypeAlias = RequestSignature | tuple[tuple[RequestSignature, int], ...]
"""What a ranking ranks nodes by: one signature's free candidates, or for several signatures with the count
each needs, the sum of their free candidates where every one has enough, else -1 (the node does not fit)."""

#: How many rankings a snapshot keeps up to date (the oldest goes first): each costs its upkeep per decision.
MAX_RANKINGS = 64

#: `_node_of_id` values: a device no node sees (no live record), or one that several nodes may see.
_NO_NODE, _SEVERAL_NODES = -2, -1


@dataclass(slots=True)
class SliceRecord:
    name: str
    driver: str
    pool: str
    generation: int
    resource_slice_count: int
    scope: str
    node_name: str | None
    node_selector: NodeSelector | None
    devices: list[int] = field(default_factory=list)
    counter_sets: tuple[CounterSet, ...] = ()


@dataclass(slots=True)
class DeviceRecord:
    """One device of one slice, with everything the search reads precomputed."""

    index: int
    id_index: int
    slice: SliceRecord
    device: Device
    token: Hashable
    anchor: object | None  # the device when the token is its id() (see SelectorCache.result)
    attributes: Mapping[str, DeviceAttribute]
    taints: tuple[DeviceTaint, ...]
    per_device: bool
    shared: bool = False  # allowMultipleAllocations: claims share it by consumable capacity

    @property
    def id(self) -> DeviceID:
        """(driver, pool, device), made when asked: a tuple kept per device took 2.4 MiB at 40,000."""
        return (self.slice.driver, self.slice.pool, self.device.name)

    @property
    def driver(self) -> str:
        return self.slice.driver

    @property
    def label(self) -> str:
        """`driver/pool/device`, for explanations, made when asked (a string per device: 3 MiB at 40,000)."""
        return "/".join(self.id)

    def cel_device(self) -> CelDevice:
        """The device's CEL form, made for each evaluation and not kept: the results are (SelectorCache),
        and 40,000 kept forms took 3 MiB (issue 14)."""
        return CelDevice.from_device(self.driver, self.device)

    def node_name(self) -> str | None:
        return self.device.node_name if self.per_device else self.slice.node_name

    def node_selector(self) -> NodeSelector | None:
        return self.device.node_selector if self.per_device else self.slice.node_selector

    def on_node(self, node: Node) -> bool:
        """Per-device node selection (only consulted for slices with perDeviceNodeSelection)."""
        device = self.device
        if device.node_name:
            return node.name == device.node_name
        if device.all_nodes:
            return True
        if device.node_selector is not None:
            return selector_matches(device.node_selector, node)
        return False


@dataclass(frozen=True, slots=True)
class PoolView:
    """A pool as one node sees it; `devices` are record indices in allocation order."""

    driver: str
    name: str
    incomplete: bool = False
    invalid: str | None = None
    devices: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.driver}/{self.name}"

    @property
    def usable(self) -> bool:
        return not self.incomplete and self.invalid is None


@dataclass(frozen=True, slots=True)
class NodeView:
    node: Node
    pools: tuple[PoolView, ...]


@dataclass(slots=True)
class _Pool:
    driver: str
    name: str
    max_generation: int = -1
    by_generation: dict[int, list[SliceRecord]] = field(default_factory=dict)


def _slice_scope(slice_: ResourceSlice) -> str:
    spec = slice_.spec
    if spec.shared_counters:
        return SCOPE_COUNTERS
    if spec.node_name:
        return SCOPE_NODE
    if spec.all_nodes:
        return SCOPE_ALL
    if spec.node_selector is not None:
        return SCOPE_SELECTOR
    if spec.per_device_node_selection:
        return SCOPE_PER_DEVICE
    return SCOPE_UNKNOWN


def _slice_token(slice_: ResourceSlice) -> Hashable | None:
    """What identifies a slice's devices: its metadata.generation, which only a change of the spec moves (our
    status writes do not), else its resourceVersion; None for offline input without either."""
    meta = slice_.metadata
    if meta.generation:
        return (meta.uid or slice_.name, f"generation {meta.generation}", slice_.spec.pool.generation)
    if meta.resource_version:
        return (meta.uid or slice_.name, meta.resource_version, slice_.spec.pool.generation)
    return None


def device_token(base: Hashable | None, device: Device) -> tuple[Hashable, object | None]:
    """A device's token for cached selector results (`base`: its slice's `_slice_token`), and its anchor (see
    SelectorCache.result). Without a version (offline input) the device object itself is the identity, kept
    alive through the anchor so that its id cannot be reused."""
    if base is not None:
        return (base, device.name), None
    return ("object", id(device)), device


class Snapshot:
    """Classes, slices, nodes and in-use devices; built once, then updated allocation by allocation."""

    def __init__(
        self,
        classes: Mapping[str, DeviceClass],
        slices: Sequence[ResourceSlice],
        nodes: Sequence[Node] | None,
        cache: SelectorCache,
        extra_taints: Mapping[DeviceID, tuple[DeviceTaint, ...]] | None = None,
    ) -> None:
        self.classes = dict(classes)
        self.cache = cache
        # Taints from DeviceTaintRules (allocation.taints.rule_taints), after each device's own slice taints.
        self._extra_taints: Mapping[DeviceID, tuple[DeviceTaint, ...]] = extra_taints or {}
        self.records: list[DeviceRecord] = []
        self._slices: list[SliceRecord] = []
        self._pools: dict[tuple[str, str], _Pool] = {}
        self._node_slices: dict[str, list[SliceRecord]] = {}
        self._global_slices: list[SliceRecord] = []
        # (driver, pool) -> device name -> id index: a tuple per device as the key took 2.4 MiB at 40,000.
        self._id_index: dict[tuple[str, str], dict[str, int]] = {}
        self._in_use: list[int] = []  # per id index: how many allocated claims (not adminAccess) hold it
        self._holders: dict[int, list[ClaimKey]] = {}
        self._shared_used: dict[int, dict[str, Fraction]] = {}
        self._shares: dict[int, int] = {}  # id index -> allocated shares of the device
        self._allocated: dict[ClaimKey, AllocationResult] = {}
        self._views: dict[str | None, NodeView] = {}
        self._verdicts: dict[RequestSignature, list[Result | None]] = {}
        self._sig_errors: dict[RequestSignature, bool] = {}
        self._relevant: dict[tuple[RequestSignature, str | None], tuple[int, ...]] = {}
        self._candidate_ids: dict[tuple[RequestSignature, str | None], Sequence[int]] = {}
        self._shared_candidates: set[tuple[RequestSignature, str | None]] = set()
        self._frontier: dict[RequestSignature, int] = {}
        # Per signature, the nodes by free candidates (`ranked`); brought up to date lazily from the ids whose
        # in-use count changed since, through the one node each id is visible from (None: not mapped yet).
        self._ranks: dict[RankKey, _FreeRanks] = {}
        self._touched: set[int] = set()
        self._stale_nodes: set[int] = set()  # positions whose slices were replaced since
        self._node_of_id: list[int] | None = None
        # Records of slices replaced since the build (replace_node_slices): kept, so indices stay valid.
        self._dead: set[int] = set()
        # Search steps taken so far (like Kubernetes' numAllocateOneInvocations), for tests and benchmarks.
        self.search_steps = 0
        for slice_ in slices:
            self._add_slice(slice_)
        if nodes is None:
            nodes = self._derived_nodes()
        ordered = sorted({n.name: n for n in nodes}.values(), key=lambda n: n.name or "")
        self.nodes: list[Node] = ordered or [Node(None)]
        self.node_index = {n.name: i for i, n in enumerate(self.nodes)}

    # ------------------------------------------------------------------------------------------- building

    @classmethod
    def build(
        cls,
        classes: Iterable[DeviceClass],
        slices: Iterable[ResourceSlice],
        nodes: Iterable[Node] | None = None,
        claims: Iterable[ResourceClaim] = (),
        cache: SelectorCache | None = None,
        extra_taints: Mapping[DeviceID, tuple[DeviceTaint, ...]] | None = None,
    ) -> Snapshot:
        """A snapshot of the cluster. `nodes=None` derives the nodes from the slices' nodeName fields; claims
        with `status.allocation` make their devices in use (adminAccess results excepted); `extra_taints`
        (per device, e.g. from DeviceTaintRules) are added to the taints the slices give the devices."""
        snapshot = cls(
            {c.name: c for c in classes},
            list(slices),
            None if nodes is None else list(nodes),
            cache if cache is not None else SelectorCache(),
            extra_taints,
        )
        for claim in claims:
            if claim.status is not None and claim.status.allocation is not None:
                snapshot.record_allocation(claim_key(claim), claim.status.allocation)
        return snapshot

    def _add_slice(self, slice_: ResourceSlice) -> None:
        spec = slice_.spec
        record = SliceRecord(
            name=slice_.name,
            driver=spec.driver,
            pool=spec.pool.name,
            generation=spec.pool.generation,
            resource_slice_count=spec.pool.resource_slice_count,
            scope=_slice_scope(slice_),
            node_name=spec.node_name,
            node_selector=spec.node_selector,
            counter_sets=tuple(spec.shared_counters or ()),
        )
        self._slices.append(record)
        pool = self._pools.setdefault((record.driver, record.pool), _Pool(record.driver, record.pool))
        pool.by_generation.setdefault(record.generation, []).append(record)
        pool.max_generation = max(pool.max_generation, record.generation)
        if record.scope == SCOPE_NODE and record.node_name:
            self._node_slices.setdefault(record.node_name, []).append(record)
        elif record.scope != SCOPE_UNKNOWN:
            self._global_slices.append(record)
        base_token = _slice_token(slice_)
        per_device = record.scope == SCOPE_PER_DEVICE
        for device in spec.devices or ():
            device_id = (record.driver, record.pool, device.name)
            index = len(self.records)
            token, anchor = device_token(base_token, device)
            self.records.append(
                DeviceRecord(
                    index=index,
                    id_index=self._intern(device_id, index),
                    slice=record,
                    device=device,
                    token=token,
                    anchor=anchor,
                    attributes=device.attributes or {},
                    taints=tuple(device.taints or ()) + self._extra_taints.get(device_id, ()),
                    per_device=per_device,
                    shared=bool(device.allow_multiple_allocations),
                )
            )
            record.devices.append(index)

    def _intern(self, device_id: DeviceID, index: int | None = None) -> int:
        driver, pool, name = device_id
        names = self._id_index.get((driver, pool))
        if names is None:
            names = self._id_index[(driver, pool)] = {}
        found = names.get(name)
        if found is None:
            found = len(self._in_use)
            if found == index:
                found = index  # one int object for both numbers of a device (32 bytes each past 256)
            names[name] = found
            self._in_use.append(0)
        return found

    def _derived_nodes(self) -> list[Node]:
        names = {s.node_name for s in self._slices if s.node_name}
        names.update(r.device.node_name for r in self.records if r.per_device and r.device.node_name)
        return [Node(name) for name in sorted(names)]

    def tokens(self) -> list[Hashable]:
        """Device tokens of this snapshot, for `SelectorCache.retain`."""
        return [r.token for r in self.records if r.index not in self._dead]

    def replace_node_slices(
        self,
        node_name: str,
        slices: Sequence[ResourceSlice],
        extra_taints: Mapping[DeviceID, tuple[DeviceTaint, ...]] | None = None,
    ) -> bool:
        """Swap one node's node-local slices for `slices` (all of its current ones) in place of a rebuild:
        allocations stay recorded (by device id), and what was derived from other nodes' devices (views,
        candidates, selector verdicts) is kept. At 5,000 nodes a rebuild and the first decision after it
        took 0.9 s, for one agent republishing its node (bench/decision_cost.py). `extra_taints`: the
        DeviceTaintRules' taints after the change (as `build` takes them), where rules are in play.

        Returns False, having changed nothing, where a rebuild is needed to stay exact: a node the snapshot
        does not know, a slice that is not this node's own (node-local, no shared counters), a pool that
        also has slices elsewhere, or rule taints that differ on any other node's device."""
        if node_name not in self.node_index:
            return False
        if any(_slice_scope(s) != SCOPE_NODE or s.spec.node_name != node_name for s in slices):
            return False
        old = self._node_slices.get(node_name, [])
        old_ids = {id(record) for record in old}
        keys = {(r.driver, r.pool) for r in old} | {(s.spec.driver, s.spec.pool.name) for s in slices}
        for key in keys:
            pool = self._pools.get(key)
            if pool is not None and any(
                id(r) not in old_ids for records in pool.by_generation.values() for r in records
            ):
                return False
        taints = extra_taints or {}
        if taints or self._extra_taints:
            # Other nodes' records keep the taints they were made with: only this node's may change.
            def elsewhere(found: Mapping[DeviceID, tuple[DeviceTaint, ...]]) -> dict[DeviceID, object]:
                return {d: t for d, t in found.items() if (d[0], d[1]) not in keys}

            if elsewhere(taints) != elsewhere(self._extra_taints):
                return False
            self._extra_taints = taints
        for record in old:
            self._dead.update(record.devices)
        self._slices = [r for r in self._slices if id(r) not in old_ids]
        self._node_slices.pop(node_name, None)
        for key in keys:
            self._pools.pop(key, None)
        first_new = len(self.records)
        for slice_ in slices:
            self._add_slice(slice_)
        self._views.pop(node_name, None)
        for stale in [k for k in self._relevant if k[1] == node_name]:
            del self._relevant[stale]
        for stale in [k for k in self._candidate_ids if k[1] == node_name]:
            del self._candidate_ids[stale]
        self._shared_candidates = {k for k in self._shared_candidates if k[1] != node_name}
        self._frontier.clear()  # the node may have devices free now
        if self._ranks:
            self._stale_nodes.add(self.node_index[node_name])  # its candidates changed: count it again
        if self._node_of_id is not None:
            self._map_ids(self.records[first_new:])
        for signature, failed in list(self._sig_errors.items()):
            if failed:
                del self._sig_errors[signature]  # perhaps only a replaced device failed: look again
            elif any(
                isinstance(self.verdict(signature, i), SelectorFailure)
                for i in range(first_new, len(self.records))
            ):
                self._sig_errors[signature] = True
        return True

    @property
    def replaced_records(self) -> int:
        """Records of replaced slices still held (a rebuild drops them)."""
        return len(self._dead)

    # ------------------------------------------------------------------------------------------- in use

    def record_allocation(self, claim: ClaimKey, allocation: AllocationResult) -> None:
        """Mark the devices of an allocated claim as in use (adminAccess results do not block others)."""
        if claim in self._allocated:
            self.release(claim)
        self._allocated[claim] = allocation
        for result in allocation.devices.results or ():
            if result.admin_access:
                continue
            index = self._intern((result.driver, result.pool, result.device))
            if result.share_id is not None:
                # A share of a device: it consumes capacity, the device stays available to others.
                self._shares[index] = self._shares.get(index, 0) + 1
                used = self._shared_used.setdefault(index, {})
                for name, amount in (result.consumed_capacity or {}).items():
                    used[name] = used.get(name, Fraction(0)) + amount.value
                continue
            self._in_use[index] += 1
            self._holders.setdefault(index, []).append(claim)
            if self._ranks:
                self._touched.add(index)

    def release(self, claim: ClaimKey) -> None:
        """Forget a claim's allocation: its devices become free again."""
        allocation = self._allocated.pop(claim, None)
        if allocation is None:
            return
        for result in allocation.devices.results or ():
            if result.admin_access:
                continue
            index = self._id_index[(result.driver, result.pool)][result.device]
            if result.share_id is not None:
                used = self._shared_used.get(index, {})
                for name, amount in (result.consumed_capacity or {}).items():
                    used[name] = used.get(name, Fraction(0)) - amount.value
                self._shares[index] -= 1
                if not self._shares[index]:
                    del self._shares[index]
                    self._shared_used.pop(index, None)
                continue
            self._in_use[index] -= 1
            if self._ranks:
                self._touched.add(index)
            holders = self._holders.get(index, [])
            if claim in holders:
                holders.remove(claim)
        # Devices became free: nodes skipped as full may fit again.
        self._frontier.clear()

    def shared_use(self, record: DeviceRecord) -> dict[str, Fraction] | None:
        """What allocated claims consume of a shared device (None: no share allocated)."""
        return self._shared_used.get(record.id_index)

    def allocation_of(self, claim: ClaimKey) -> AllocationResult | None:
        return self._allocated.get(claim)

    def allocated_claims(self) -> list[ClaimKey]:
        return list(self._allocated)

    def in_use(self, record: DeviceRecord) -> bool:
        return self._in_use[record.id_index] > 0

    def holders(self, record: DeviceRecord) -> list[ClaimKey]:
        return list(self._holders.get(record.id_index, ()))

    # ------------------------------------------------------------------------------------------- pools

    def view(self, node: Node) -> NodeView:
        found = self._views.get(node.name)
        if found is None:
            found = self._gather(node)
            self._views[node.name] = found
        return found

    def own_pools(self, node: Node) -> tuple[str, ...]:
        """Labels (`driver/pool`) of the pools whose devices this node sees only through its own node-local
        slices (`nodeName`): explanations name their devices without the pool, as the pool is the node."""
        if node.name is None:
            return ()
        mine = {(s.driver, s.pool) for s in self._node_slices.get(node.name, ())}
        elsewhere = {(s.driver, s.pool) for s in self._global_slices if s.scope != SCOPE_COUNTERS}
        return tuple(f"{driver}/{pool}" for driver, pool in sorted(mine - elsewhere))

    def _visible(self, slice_: SliceRecord, node: Node) -> bool:
        scope = slice_.scope
        if scope == SCOPE_COUNTERS:
            return True
        if scope == SCOPE_NODE:
            return node.name is not None and slice_.node_name == node.name
        if scope == SCOPE_ALL:
            return True
        if scope == SCOPE_SELECTOR:
            return slice_.node_selector is not None and selector_matches(slice_.node_selector, node)
        if scope == SCOPE_PER_DEVICE:
            return any(self.records[i].on_node(node) for i in slice_.devices)
        return False

    def _gather(self, node: Node) -> NodeView:
        relevant: dict[tuple[str, str], list[SliceRecord]] = {}
        candidates = self._node_slices.get(node.name, []) if node.name is not None else []
        for slice_ in [*candidates, *self._global_slices]:
            if not self._visible(slice_, node):
                continue
            key = (slice_.driver, slice_.pool)
            have = relevant.get(key)
            if have is None or slice_.generation > have[0].generation:
                relevant[key] = [slice_]
            elif slice_.generation == have[0].generation:
                have.append(slice_)
        pools: list[PoolView] = []
        for key in sorted(relevant):
            slices = sorted(relevant[key], key=lambda s: s.name)
            generation = slices[0].generation
            expected = slices[0].resource_slice_count
            if len(slices) != expected:
                pool = self._pools[key]
                if pool.max_generation > generation:
                    # A newer generation is being published (for other nodes so far): ignore the old one.
                    continue
                if len(pool.by_generation[generation]) != expected:
                    pools.append(PoolView(key[0], key[1], incomplete=True))
                    continue
            device_slices = [s for s in slices if s.scope != SCOPE_COUNTERS]
            seen: set[str] = set()
            invalid = None
            devices: list[int] = []
            for slice_ in device_slices:
                for index in slice_.devices:
                    name = self.records[index].device.name
                    if name in seen and invalid is None:
                        invalid = f"duplicate device name {name}"
                    seen.add(name)
                    devices.append(index)
            invalid = invalid or self._counter_problem(slices)
            if invalid is not None:
                pools.append(PoolView(key[0], key[1], invalid=invalid))
                continue
            pools.append(PoolView(key[0], key[1], devices=tuple(devices)))
        # Pools with binding conditions come last, so that simpler devices are preferred (1.36).
        last = [p for p in pools if any(self.records[i].device.binding_conditions for i in p.devices)]
        if last:
            pools = [p for p in pools if p not in last] + last
        return NodeView(node, tuple(pools))

    @staticmethod
    def _counter_sets(slices: Iterable[SliceRecord]) -> tuple[dict[str, CounterSet], str | None]:
        sets: dict[str, CounterSet] = {}
        for slice_ in slices:
            for counter_set in slice_.counter_sets:
                if counter_set.name in sets:
                    return sets, f"duplicate counter set name {counter_set.name}"
                sets[counter_set.name] = counter_set
        return sets, None

    def _counter_problem(self, slices: Sequence[SliceRecord]) -> str | None:
        """Why the pool's counters are invalid: duplicate sets, or devices consuming unknown counters."""
        sets, problem = self._counter_sets(s for s in slices if s.scope == SCOPE_COUNTERS)
        if problem is not None:
            return problem
        for slice_ in slices:
            for index in slice_.devices:
                for consumption in self.records[index].device.consumes_counters or ():
                    counter_set = sets.get(consumption.counter_set)
                    if counter_set is None:
                        return f"counter set {consumption.counter_set} not found"
                    for name in consumption.counters:
                        if name not in counter_set.counters:
                            return f"counter {name} not found in counter set {counter_set.name}"
        return None

    def counters_available(self, record: DeviceRecord) -> dict[tuple[str, str], Fraction]:
        """The counters of the device's pool (same generation) minus what allocated devices consume."""
        pool = self._pools[(record.slice.driver, record.slice.pool)]
        slices = pool.by_generation.get(record.slice.generation, [])
        sets, _ = self._counter_sets(s for s in slices if s.scope == SCOPE_COUNTERS)
        available = {
            (set_name, name): counter.value.value
            for set_name, counter_set in sets.items()
            for name, counter in counter_set.counters.items()
        }
        for slice_ in slices:
            for index in slice_.devices:
                other = self.records[index]
                if not other.device.consumes_counters:
                    continue
                # A device counts as allocated when a claim holds it or a share of it.
                if not self._in_use[other.id_index] and other.id_index not in self._shares:
                    continue
                for consumption in other.device.consumes_counters:
                    for name, counter in consumption.counters.items():
                        key = (consumption.counter_set, name)
                        if key in available:
                            available[key] -= counter.value.value
        return available

    # ---------------------------------------------------------------------------------------- selectors

    def verdict(self, signature: RequestSignature, index: int) -> Result:
        """Class selectors, then request selectors, each in order; the first False or failure decides."""
        verdicts = self._verdicts.get(signature)
        if verdicts is None:
            verdicts = [None] * len(self.records)
            self._verdicts[signature] = verdicts
        elif index >= len(verdicts):  # records added by replace_node_slices
            verdicts.extend([None] * (len(self.records) - len(verdicts)))
        found = verdicts[index]
        if found is None:
            record = self.records[index]
            found = True
            made: list[CelDevice] = []

            def cel_device() -> CelDevice:  # made once for the signature's expressions, when one is evaluated
                if not made:
                    made.append(record.cel_device())
                return made[0]

            for expression in signature.expressions:
                result = self.cache.result(expression, record.token, record.anchor, cel_device, record.label)
                if result is not True:
                    found = result
                    break
            verdicts[index] = found
        return found

    def has_failures(self, signature: RequestSignature) -> bool:
        """Whether the signature's selectors fail (compile or runtime error) on any device of the snapshot."""
        found = self._sig_errors.get(signature)
        if found is None:
            dead = self._dead
            found = any(
                isinstance(self.verdict(signature, i), SelectorFailure)
                for i in range(len(self.records))
                if i not in dead
            )
            self._sig_errors[signature] = found
        return found

    def candidates(self, signature: RequestSignature, node: Node) -> tuple[int, ...]:
        """Devices an ExactCount search may touch on this node, in order: those whose selectors fail
        (touching one is fatal) and those that match, are reachable from the node and carry no untolerated
        taint."""
        key = (signature, node.name)
        found = self._relevant.get(key)
        if found is None:
            out: list[int] = []
            pools = self.view(node).pools
            for pool in pools:
                if not pool.usable:
                    continue
                for index in pool.devices:
                    verdict = self.verdict(signature, index)
                    if verdict is True:
                        record = self.records[index]
                        if record.per_device and not record.on_node(node):
                            continue
                        if record.taints and signature.blocked_by_taint(record.taints):
                            continue
                        if not record.shared and not capacity_fits(
                            signature.capacity_requests, record.device.capacity or {}
                        ):
                            continue
                        out.append(index)
                    elif verdict is not False:
                        out.append(index)
            found = tuple(out)
            if len(pools) == 1 and found == pools[0].devices:
                found = pools[0].devices  # every device of the node's pool: its tuple, not a copy per node
            self._relevant[key] = found
        return found

    def free_candidates(self, signature: RequestSignature, node: Node) -> int:
        """How many candidates are free; SHARED_CANDIDATES when a shared device (allowMultipleAllocations)
        is among them, since it can serve several requests."""
        key = (signature, node.name)
        ids = self._candidate_ids.get(key)
        if ids is None:
            records = self.records
            candidates = self.candidates(signature, node)
            if any(records[i].shared for i in candidates):
                ids = self._candidate_ids[key] = []
                self._shared_candidates.add(key)
            else:
                if all(records[i].id_index == i for i in candidates):
                    ids = candidates  # record and id numbers agree (no device listed twice): no copy per node
                else:
                    ids = [records[i].id_index for i in candidates]
                self._candidate_ids[key] = ids
        if key in self._shared_candidates:
            return SHARED_CANDIDATES
        in_use = self._in_use
        return [in_use[j] for j in ids].count(0)

    def frontier(self, signature: RequestSignature) -> int:
        """Index of the first node that may still have a free candidate for the signature; nodes before
        it have none. Only valid while the in-use set grows; `release` resets it."""
        start = self._frontier.get(signature, 0)
        nodes = self.nodes
        while start < len(nodes) and self.free_candidates(signature, nodes[start]) == 0:
            start += 1
        self._frontier[signature] = start
        return start

    def ranked(self, needs: Mapping[RequestSignature, int], most_first: bool = False) -> Iterator[int]:
        """Positions of the nodes with enough free candidates for each signature (the count it needs), by
        their sum: fewest first (binpack), or most first (spread), ties in node order. Kept per signature (or
        per set of needs, for several) and brought up to date from the devices whose use changed since the
        last call, so a decision costs the nodes it changed, not a count over every node. Not valid across
        a change to the in-use set while iterating."""
        key: RankKey
        if len(needs) == 1:
            [(key, floor)] = needs.items()
        else:
            key, floor = tuple(needs.items()), 0
        ranks = self._current_ranks(key)
        values = sorted((v for v in ranks.by_count if v >= floor), reverse=most_first)
        for value in values:
            group = ranks.by_count[value]
            best = min(group)  # most decisions stop here: no sort of a group of thousands of empty nodes
            yield best
            yield from sorted(p for p in group if p != best)

    def _rank_value(self, key: RankKey, node: Node) -> int:
        if isinstance(key, RequestSignature):
            return self.free_candidates(key, node)
        total = 0
        for signature, needed in key:
            free = self.free_candidates(signature, node)
            if free < needed:
                return -1
            total += free
        return total

    def _current_ranks(self, key: RankKey) -> _FreeRanks:
        if self._touched or self._stale_nodes:
            self._bring_ranks_up_to_date()
        ranks = self._ranks.get(key)
        if ranks is None:
            if len(self._ranks) >= MAX_RANKINGS:
                del self._ranks[next(iter(self._ranks))]
            ranks = _FreeRanks.of([self._rank_value(key, node) for node in self.nodes])
            self._ranks[key] = ranks
        return ranks

    def _bring_ranks_up_to_date(self) -> None:
        """Count again the nodes whose slices were replaced and those that see a device whose use changed;
        drop every ranking when such a device is visible from several nodes (a pool not local to one node):
        the next call counts afresh."""
        if self._node_of_id is None:
            self._node_of_id = [_NO_NODE] * len(self._in_use)
            self._map_ids(self.records)
        node_of_id = self._node_of_id
        positions = self._stale_nodes
        for index in self._touched:
            position = node_of_id[index] if index < len(node_of_id) else _NO_NODE
            if position == _SEVERAL_NODES:
                self._ranks.clear()
                break
            if position != _NO_NODE:
                positions.add(position)
        else:
            nodes = self.nodes
            for key, ranks in self._ranks.items():
                for position in positions:
                    ranks.move(position, self._rank_value(key, nodes[position]))
        self._touched.clear()
        self._stale_nodes.clear()

    def _map_ids(self, records: Iterable[DeviceRecord]) -> None:
        """Record, per device id of these records, the position of the one node that sees it through a
        node-local slice, or _SEVERAL_NODES (any other slice, or listed on two nodes); an id without a
        live record, or only on a node the snapshot does not know, stays _NO_NODE."""
        found = self._node_of_id
        assert found is not None
        found.extend([_NO_NODE] * (len(self._in_use) - len(found)))
        dead = self._dead
        for record in records:
            if record.index in dead:
                continue
            slice_ = record.slice
            position = (
                self.node_index.get(slice_.node_name, _NO_NODE)
                if slice_.scope == SCOPE_NODE
                else _SEVERAL_NODES
            )
            if position == _NO_NODE:
                continue
            was = found[record.id_index]
            found[record.id_index] = position if was in (_NO_NODE, position) else _SEVERAL_NODES


def claim_key(claim: ResourceClaim) -> ClaimKey:
    return (claim.metadata.namespace or "", claim.name)
