"""The allocation search: one Pod's claims in, an allocation on one node or an explanation out.

Per node this is Kubernetes' structured allocator as 1.36 runs it (k8s.io/dynamic-resource-allocation
v0.36, "incubating"): a depth-first search with backtracking over the claims (Pod order), their requests
(spec order) and each device needed, trying devices in pool order; the devices of one request are tried as
combinations (each next one after the previous one), and the first complete solution wins. A selector that
fails on a device the search touches, an All request that sees an incomplete or invalid pool, or more than
32 devices per claim make the whole attempt fail (Kubernetes returns an error and the scheduler gives up on
the Pod for this round, whatever other nodes offer).

Which node, among those with a solution, is the placement policy's choice (`Placement`):
- "first": nodes are tried in name order and the first with a solution wins (the structured allocator's
  own order);
- "binpack" (the operator's default): nodes are tried from the fewest free candidate devices for the Pod's
  requests to the most (ties in name order), so small requests fill partly used nodes and whole nodes stay
  free for large ones;
- "spread": from the most free candidates to the fewest, so load is spread across nodes.
The ranking counts free candidates per request signature, never runs the search on a node that cannot fit,
and stops at the first node in that order with a solution. The snapshot keeps that ranking up to date as
devices are taken and freed (`Snapshot.ranked`; one per signature, or per set of signatures with the counts a
Pod needs), so a decision does not count every node again: at 5,000 nodes that count was most of a
decision's 8-16 ms.
When a full scan is needed (see below) every node is searched anyway and the best-ranked node with a
solution wins.

Two things keep this fast without changing any outcome:
- A subtree that failed for one device is not searched again for an equivalent later device (same selector
  outcomes for every request of the Pod, same constrained attribute values, same in-use state, no shared
  capacity): by symmetry it fails too.
- When no selector of the Pod can fail on any device and no request uses allocationMode All, no node can
  raise an error, so the scan stops at the first node that fits and skips nodes that cannot fit (too few
  free candidates), starting at a per-signature frontier behind which every node is full. Otherwise every
  node is searched, as kube-scheduler filters every node of a small cluster (and runs the allocator even on
  nodes that an allocated claim rules out), so that an error anywhere fails the Pod as it would there.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from dra_operator.allocation.capacity import Amounts, as_quantity
from dra_operator.allocation.capacity import consumption as capacity_consumption
from dra_operator.allocation.capacity import fits as capacity_fits
from dra_operator.allocation.constraints import Constraint, lookup_attribute, typed_value
from dra_operator.allocation.explain import (
    SHOWN_DEVICES,
    ClaimNotOnNode,
    ClassNotFound,
    ConstraintBlocksAll,
    ConstraintUnsatisfiable,
    DeviceNames,
    DevicesContended,
    Explanation,
    FatalReason,
    InvalidPools,
    NoCombination,
    NodeFailure,
    NodeReason,
    PoolNotReady,
    RequestUnsatisfiable,
    SelectorError,
    TooManyDevices,
)
from dra_operator.allocation.nodes import NODE_NAME_FIELD, Node, selector_matches
from dra_operator.allocation.selectors import SelectorFailure
from dra_operator.allocation.snapshot import (
    ClaimKey,
    DeviceRecord,
    RequestSignature,
    Snapshot,
    claim_key,
    toleration_key,
)
from dra_operator.api.quantity import Quantity
from dra_operator.api.resource import (
    ALL,
    AllocationResult,
    DeviceAllocationConfiguration,
    DeviceAllocationResult,
    DeviceClass,
    DeviceRequestAllocationResult,
    DeviceSubRequest,
    DeviceToleration,
    ExactDeviceRequest,
    NodeSelector,
    NodeSelectorRequirement,
    NodeSelectorTerm,
    ResourceClaim,
)

RESULTS_MAX = 32
"""At most this many devices per claim (AllocationResultsMaxSize)."""

DETAILED_NODES = 20
"""Nodes diagnosed in detail in an explanation; the rest are counted."""

Placement = Literal["first", "binpack", "spread"]
PLACEMENTS: tuple[Placement, ...] = ("binpack", "spread", "first")


@dataclass(frozen=True, slots=True)
class PodRef:
    namespace: str
    name: str
    uid: str = ""

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Allocation:
    """The node for the Pod and, per newly allocated claim, the result for its `status.allocation`."""

    node_name: str | None
    results: dict[ClaimKey, AllocationResult]
    reused: tuple[ClaimKey, ...] = ()

    def commit(self, snapshot: Snapshot) -> None:
        """Record the new allocations in the snapshot (after they were written), so the next Pod sees them."""
        for key, result in self.results.items():
            snapshot.record_allocation(key, result)


@dataclass(frozen=True, slots=True)
class Unallocatable:
    explanation: Explanation


Outcome = Allocation | Unallocatable


# ------------------------------------------------------------------------------------------------ plan


@dataclass(slots=True)
class _Alt:
    """A request with `exactly`, or one subrequest of `firstAvailable`."""

    request: str
    subrequest: str
    signature: RequestSignature
    device_class: DeviceClass
    all_mode: bool
    count: int
    admin: bool
    tolerations: list[DeviceToleration] | None

    @property
    def name(self) -> str:
        return f"{self.request}/{self.subrequest}" if self.subrequest else self.request


@dataclass(slots=True)
class _Request:
    name: str
    alts: list[_Alt]
    first_available: bool


@dataclass(slots=True)
class _Claim:
    key: ClaimKey
    label: str
    claim: ResourceClaim
    requests: list[_Request]


class _Fatal(Exception):
    def __init__(self, reason: FatalReason) -> None:
        super().__init__(reason.render())
        self.reason = reason


class _MaxSize(Exception):
    """More than RESULTS_MAX devices for a claim: backtrack further (another subrequest may need fewer)."""


def _claim_label(claim: ResourceClaim) -> str:
    namespace = claim.metadata.namespace
    return f"{namespace}/{claim.name}" if namespace else claim.name


def _plan(snapshot: Snapshot, claim: ResourceClaim) -> _Claim | ClassNotFound:
    label = _claim_label(claim)
    requests: list[_Request] = []
    for request in claim.spec.devices.requests or ():
        alts: list[_Alt] = []
        subs: list[tuple[str, ExactDeviceRequest | DeviceSubRequest]]
        if request.exactly is not None:
            subs = [("", request.exactly)]
        else:
            subs = [(sub.name, sub) for sub in request.first_available or ()]
        for sub_name, spec in subs:
            class_name = spec.device_class_name
            device_class = snapshot.classes.get(class_name)
            if device_class is None:
                return ClassNotFound(
                    label, f"{request.name}/{sub_name}" if sub_name else request.name, class_name
                )
            selectors = spec.selectors or ()
            tolerations = spec.tolerations
            signature = RequestSignature(
                class_name=class_name,
                class_expressions=tuple(s.cel.expression for s in device_class.spec.selectors or ()),
                request_expressions=tuple(s.cel.expression for s in selectors),
                tolerations=toleration_key(tolerations),
                capacity=tuple(sorted((spec.capacity.requests or {}).items())) if spec.capacity else (),
            )
            all_mode = spec.allocation_mode == ALL
            alts.append(
                _Alt(
                    request=request.name,
                    subrequest=sub_name,
                    signature=signature,
                    device_class=device_class,
                    all_mode=all_mode,
                    count=0 if all_mode else spec.count or 1,
                    admin=isinstance(spec, ExactDeviceRequest) and bool(spec.admin_access),
                    tolerations=list(tolerations) if tolerations else None,
                )
            )
        requests.append(_Request(request.name, alts, request.first_available is not None))
    return _Claim(claim_key(claim), label, claim, requests)


# ------------------------------------------------------------------------------------------- one node


class _NodeSearch:
    """Kubernetes' per-node allocation for the Pod's unallocated claims."""

    def __init__(self, snapshot: Snapshot, node: Node, claims: Sequence[_Claim]) -> None:
        self.snapshot = snapshot
        self.node = node
        self.claims = claims
        self.records = snapshot.records
        self.in_use = snapshot._in_use
        self.view = snapshot.view(node)
        # id index -> claim indices that are allocating the device in this attempt
        self.allocating: dict[int, list[int]] = {}
        # per claim: (request or subrequest, device record, what it consumes of a shared device, whether it
        # took counters)
        self.results: list[list[tuple[_Alt, int, Amounts | None, bool]]] = [[] for _ in claims]
        # shared devices: id index -> capacity consumed by this attempt
        self.capacity_allocating: dict[int, Amounts] = {}
        self.constraints: list[list[Constraint]] = [
            [Constraint(spec) for spec in c.claim.spec.devices.constraints or ()] for c in claims
        ]
        self.all_devices: dict[tuple[int, int, int], list[int]] = {}
        self.selected: dict[tuple[int, int], int] = {}
        self._keys: dict[int, Hashable] = {}
        self._attr_names = sorted({k.attribute for cs in self.constraints for k in cs})
        self._alts = [alt for c in claims for r in c.requests for alt in r.alts]
        # Partitionable devices: per pool, counters left by allocated devices and those consumed in flight.
        self._counters_left: dict[tuple[str, str], dict[tuple[str, str], Fraction]] = {}
        self._counters_used: dict[tuple[str, str], dict[tuple[str, str], Fraction]] = {}

    # -- setup: what Kubernetes checks before searching (validateDeviceRequest)

    def _num(self, ci: int, ri: int, si: int, alt: _Alt) -> int:
        return len(self.all_devices[(ci, ri, si)]) if alt.all_mode else alt.count

    def _prepare(self) -> None:
        for ci, claim in enumerate(self.claims):
            minimum = 0
            for ri, request in enumerate(claim.requests):
                fewest: int | None = None
                for si, alt in enumerate(request.alts):
                    if alt.all_mode:
                        self.all_devices[(ci, ri, si)] = self._all_devices(claim, alt)
                    num = self._num(ci, ri, si, alt)
                    fewest = num if fewest is None else min(fewest, num)
                # Checked request by request, before later requests are looked at (as Kubernetes does).
                fewest = fewest or 0
                if fewest > RESULTS_MAX - minimum:
                    raise _Fatal(TooManyDevices(claim.label, minimum + fewest, RESULTS_MAX, self.node.name))
                minimum += fewest

    def _all_devices(self, claim: _Claim, alt: _Alt) -> list[int]:
        found: list[int] = []
        for pool in self.view.pools:
            if pool.incomplete or pool.invalid is not None:
                raise _Fatal(PoolNotReady(claim.label, alt.name, pool.label, pool.invalid, self.node.name))
            for index in pool.devices:
                verdict = self.snapshot.verdict(alt.signature, index)
                if isinstance(verdict, SelectorFailure):
                    raise _Fatal(self._selector_error(claim, alt, verdict))
                record = self.records[index]
                if not verdict or (record.per_device and not record.on_node(self.node)):
                    continue
                used = self.snapshot.shared_use(record) if record.shared else None
                if capacity_fits(alt.signature.capacity_requests, record.device.capacity or {}, used):
                    found.append(index)
        return found

    def _selector_error(self, claim: _Claim, alt: _Alt, failure: SelectorFailure) -> SelectorError:
        source = (
            f"class {alt.device_class.name}"
            if failure.expression in alt.signature.class_expressions
            else "claim"
        )
        return SelectorError(claim.label, alt.name, failure, source, self.node.name)

    # -- the search

    def run(self) -> bool:
        self._prepare()
        try:
            return self._step(0, 0, 0, 0, False)
        except _MaxSize:
            # Every choice for the first claim exceeds the result limit: no solution on this node.
            return False

    def _busy(self, id_index: int) -> bool:
        return self.in_use[id_index] > 0 or bool(self.allocating.get(id_index))

    def _step(self, ci: int, ri: int, si: int, di: int, fixed_sub: bool, start: int = 0) -> bool:
        """One device of one request. `start` is where the next device of the same request is looked for:
        Kubernetes tries combinations of devices within a request (in device order), not permutations."""
        self.snapshot.search_steps += 1
        claims = self.claims
        if ci >= len(claims):
            return True
        claim = claims[ci]
        if ri >= len(claim.requests):
            try:
                return self._step(ci + 1, 0, 0, 0, False)
            except _MaxSize:
                return False
        request = claim.requests[ri]
        if request.first_available and not fixed_sub:
            all_exceeded = True
            for sub_index in range(len(request.alts)):
                try:
                    done = self._step(ci, ri, sub_index, di, True)
                except _MaxSize:
                    continue
                all_exceeded = False
                if done:
                    self.selected[(ci, ri)] = sub_index
                    return True
            if all_exceeded:
                raise _MaxSize
            return False

        alt = request.alts[si]
        if alt.all_mode and not self.all_devices[(ci, ri, si)]:
            return False
        num = self._num(ci, ri, si, alt)
        if di >= num:
            return self._step(ci, ri + 1, 0, 0, False)
        if len(self.results[ci]) + num - di > RESULTS_MAX:
            raise _MaxSize

        if alt.all_mode:
            index = self.all_devices[(ci, ri, si)][di]
            if not self._add(ci, alt, index, must=True):
                return False
            try:
                done = self._step(ci, ri, si, di + 1, fixed_sub)
            except _MaxSize:
                self._undo(ci, alt, index)
                raise
            if not done:
                self._undo(ci, alt, index)
            return done

        records = self.records
        in_use = self.in_use
        failed: set[Hashable] | None = None
        candidates = self.snapshot.candidates(alt.signature, self.node)
        for position in range(start, len(candidates)):
            index = candidates[position]
            id_index = records[index].id_index
            if alt.admin:
                if ci in self.allocating.get(id_index, ()):
                    continue
            elif in_use[id_index] or self.allocating.get(id_index):
                continue
            verdict = self.snapshot.verdict(alt.signature, index)
            if verdict is not True:
                assert isinstance(verdict, SelectorFailure)
                raise _Fatal(self._selector_error(claim, alt, verdict))
            if failed is not None and self._key(index) in failed:
                continue
            if not self._add(ci, alt, index, must=False):
                continue
            try:
                done = self._step(ci, ri, si, di + 1, fixed_sub, position + 1)
            except _MaxSize:
                self._undo(ci, alt, index)
                raise
            if done:
                return True
            self._undo(ci, alt, index)
            if failed is None:
                failed = set()
            failed.add(self._key(index))
        return False

    def _add(self, ci: int, alt: _Alt, index: int, must: bool) -> bool:
        record = self.records[index]
        id_index = record.id_index
        shared = record.shared
        if alt.admin:
            if not shared and ci in self.allocating.get(id_index, ()):
                return False
        elif self._busy(id_index):
            return False
        # A shared device already in use has had its counters taken by its first share.
        skip_counters = shared and (
            self.snapshot.shared_use(record) is not None or id_index in self.capacity_allocating
        )
        counters = bool(record.device.consumes_counters) and not skip_counters
        if counters and not self._take_counters(record):
            return False
        if record.taints and alt.signature.blocked_by_taint(record.taints):
            if counters:
                self._return_counters(record)
            return False
        constraints = self.constraints[ci]
        driver = record.driver
        for position, constraint in enumerate(constraints):
            if not constraint.add(alt.request, alt.subrequest, driver, record.attributes):
                if must:
                    raise _Fatal(
                        ConstraintBlocksAll(
                            self.claims[ci].label,
                            alt.name,
                            record.label,
                            constraint.describe(),
                            self.node.name,
                        )
                    )
                for earlier in constraints[:position]:
                    earlier.remove(alt.request, alt.subrequest)
                if counters:
                    self._return_counters(record)
                return False
        share: Amounts | None = None
        if shared:
            requests, capacities = alt.signature.capacity_requests, record.device.capacity or {}
            used = dict(self.snapshot.shared_use(record) or {})
            for name, amount in self.capacity_allocating.get(id_index, {}).items():
                used[name] = used.get(name, Fraction(0)) + amount
            if not capacity_fits(requests, capacities, used):
                for constraint in constraints:
                    constraint.remove(alt.request, alt.subrequest)
                if counters:
                    self._return_counters(record)
                return False
            share = capacity_consumption(requests, capacities)
            taken = self.capacity_allocating.setdefault(id_index, {})
            for name, amount in share.items():
                taken[name] = taken.get(name, Fraction(0)) + amount
        else:
            self.allocating.setdefault(id_index, []).append(ci)
        self.results[ci].append((alt, index, share, counters))
        return True

    def _take_counters(self, record: DeviceRecord) -> bool:
        """Consume the device's counters; False (nothing consumed) if any counter of its pool would go
        below zero, as Kubernetes checks every counter of the pool."""
        pool = (record.slice.driver, record.slice.pool)
        left = self._counters_left.get(pool)
        if left is None:
            left = self._counters_left[pool] = self.snapshot.counters_available(record)
        used = self._counters_used.setdefault(pool, {})
        self._consume(record, used, 1)
        if any(value < used.get(key, 0) for key, value in left.items()):
            self._consume(record, used, -1)
            return False
        return True

    def _return_counters(self, record: DeviceRecord) -> None:
        self._consume(record, self._counters_used[(record.slice.driver, record.slice.pool)], -1)

    @staticmethod
    def _consume(record: DeviceRecord, used: dict[tuple[str, str], Fraction], sign: int) -> None:
        for consumption in record.device.consumes_counters or ():
            for name, counter in consumption.counters.items():
                key = (consumption.counter_set, name)
                used[key] = used.get(key, Fraction(0)) + sign * counter.value.value

    def _undo(self, ci: int, alt: _Alt, index: int) -> None:
        for constraint in self.constraints[ci]:
            constraint.remove(alt.request, alt.subrequest)
        record = self.records[index]
        _, _, share, counters = self.results[ci].pop()
        if counters:
            self._return_counters(record)
        if share is not None:
            taken = self.capacity_allocating[record.id_index]
            for name, amount in share.items():
                taken[name] -= amount
            if not any(taken.values()):
                del self.capacity_allocating[record.id_index]
        else:
            self.allocating[record.id_index].remove(ci)

    def _key(self, index: int) -> Hashable:
        """Devices with equal keys are interchangeable for this Pod's search (see the module docstring)."""
        found = self._keys.get(index)
        if found is None:
            record = self.records[index]
            outcomes: list[object] = [("shared", index)] if record.shared else []
            for alt in self._alts:
                verdict = self.snapshot.verdict(alt.signature, index)
                if isinstance(verdict, SelectorFailure):
                    outcomes = [("unique", index)]
                    break
                outcomes.append(
                    (verdict, bool(record.taints) and alt.signature.blocked_by_taint(record.taints))
                )
            on_node = not record.per_device or record.on_node(self.node)
            attributes = tuple(
                typed_value(lookup_attribute(record.attributes, record.driver, name))
                for name in self._attr_names
            )
            counters: object = None
            if record.device.consumes_counters:
                # Devices drawing on counters are only interchangeable within one pool, with equal draws.
                draws = tuple(
                    (c.counter_set, tuple(sorted((n, v.value.value) for n, v in c.counters.items())))
                    for c in record.device.consumes_counters
                )
                counters = (record.slice.driver, record.slice.pool, record.slice.generation, draws)
            found = (tuple(outcomes), on_node, attributes, counters)
            self._keys[index] = found
        id_index = self.records[index].id_index
        return (found, self.in_use[id_index] > 0, tuple(self.allocating.get(id_index, ())))

    # -- results

    def allocation_results(self) -> list[AllocationResult]:
        out: list[AllocationResult] = []
        for ci, claim in enumerate(self.claims):
            results = [
                DeviceRequestAllocationResult(
                    request=alt.name,
                    driver=self.records[index].slice.driver,
                    pool=self.records[index].slice.pool,
                    device=self.records[index].device.name,
                    admin_access=True if alt.admin else None,
                    tolerations=alt.tolerations,
                    binding_conditions=self.records[index].device.binding_conditions,
                    binding_failure_conditions=self.records[index].device.binding_failure_conditions,
                    share_id=self._share_id(claim, alt, index, position) if share is not None else None,
                    consumed_capacity=self._consumed(alt, index, share) if share else None,
                )
                for position, (alt, index, share, _) in enumerate(self.results[ci])
            ]
            config = self._config(ci, claim)
            out.append(
                AllocationResult(
                    devices=DeviceAllocationResult(results=results, config=config or None),
                    node_selector=self._node_selector(ci),
                )
            )
        return out

    def _share_id(self, claim: _Claim, alt: _Alt, index: int, position: int) -> str:
        # Kubernetes draws a random UID; a name-based one keeps results reproducible.
        seed = f"{'/'.join(claim.key)}/{alt.name}/{self.records[index].label}/{position}"
        return str(uuid.uuid5(uuid.NAMESPACE_URL, seed))

    def _consumed(self, alt: _Alt, index: int, share: Amounts) -> dict[str, Quantity]:
        capacities = self.records[index].device.capacity or {}
        requests = alt.signature.capacity_requests or {}
        out: dict[str, Quantity] = {}
        for name, amount in share.items():
            capacity = capacities[name]
            policy = capacity.request_policy
            out[name] = as_quantity(
                amount, requests.get(name), policy.default if policy else None, capacity.value
            )
        return out

    def _chosen_alts(self, ci: int, claim: _Claim) -> list[_Alt]:
        return [r.alts[self.selected.get((ci, ri), 0)] for ri, r in enumerate(claim.requests)]

    def _config(self, ci: int, claim: _Claim) -> list[DeviceAllocationConfiguration]:
        """Class configs first (once per class, naming the requests that use it), then the claim's own."""
        config: list[DeviceAllocationConfiguration] = []
        by_class: dict[str, list[DeviceAllocationConfiguration]] = {}
        chosen = self._chosen_alts(ci, claim)
        for alt in chosen:
            entries = by_class.get(alt.device_class.name)
            if entries is not None:
                for entry in entries:
                    entry.requests = [*(entry.requests or []), alt.name]
                continue
            entries = [
                DeviceAllocationConfiguration(source="FromClass", requests=[alt.name], opaque=item.opaque)
                for item in alt.device_class.spec.config or ()
            ]
            by_class[alt.device_class.name] = entries
            config.extend(entries)
        for item in claim.claim.spec.devices.config or ():
            if not item.requests:
                config.append(DeviceAllocationConfiguration(source="FromClaim", opaque=item.opaque))
                continue
            # Once per request it names: Kubernetes appends a config that names two requests twice.
            for request, alt in zip(claim.requests, chosen, strict=True):
                if request.name in item.requests or (alt.subrequest and alt.name in item.requests):
                    config.append(
                        DeviceAllocationConfiguration(
                            source="FromClaim", requests=item.requests, opaque=item.opaque
                        )
                    )
        return config

    def _node_selector(self, ci: int) -> NodeSelector | None:
        """As Kubernetes builds it: a node-local device pins the claim to that node; slice node selectors are
        merged into one term; devices available on all nodes add nothing."""
        expressions: list[NodeSelectorRequirement] = []
        fields: list[NodeSelectorRequirement] = []
        for _, index, _, _ in self.results[ci]:
            record = self.records[index]
            node_name = record.node_name()
            if not node_name and record.device.binds_to_node:
                node_name = self.node.name
            if node_name:
                requirement = NodeSelectorRequirement(key=NODE_NAME_FIELD, operator="In", values=[node_name])
                return NodeSelector(node_selector_terms=[NodeSelectorTerm(match_fields=[requirement])])
            selector = record.node_selector()
            if selector is not None and len(selector.node_selector_terms) == 1:
                term = selector.node_selector_terms[0]
                _merge(term.match_fields or [], fields)
                _merge(term.match_expressions or [], expressions)
        if not expressions and not fields:
            return None
        return NodeSelector(
            node_selector_terms=[
                NodeSelectorTerm(match_expressions=expressions or None, match_fields=fields or None)
            ]
        )


def _merge(source: Sequence[NodeSelectorRequirement], into: list[NodeSelectorRequirement]) -> None:
    for requirement in source:
        values = set(requirement.values or ())
        if not any(
            r.key == requirement.key and r.operator == requirement.operator and set(r.values or ()) == values
            for r in into
        ):
            into.append(requirement)


# ------------------------------------------------------------------------------------------ diagnosis


def _diagnose(snapshot: Snapshot, node: Node, claims: Sequence[_Claim]) -> NodeFailure:
    """Why the search found nothing on this node, from each request's own point of view first."""
    view = snapshot.view(node)
    records = snapshot.records
    skipped = tuple(p.label for p in view.pools if not p.usable)
    reasons: list[NodeReason] = []
    pools_devices = [i for p in view.pools if p.usable for i in p.devices]
    usable_sets: list[tuple[_Claim, _Alt, int, set[int]]] = []
    for claim in claims:
        for request in claim.requests:
            per_alt: list[RequestUnsatisfiable] = []
            satisfiable = False
            for alt in request.alts:
                free: list[int] = []
                busy: list[int] = []
                tainted: list[str] = []
                no_counters: list[str] = []
                not_matching: list[str] = []
                for index in pools_devices:
                    record = records[index]
                    if snapshot.verdict(alt.signature, index) is not True or (
                        record.per_device and not record.on_node(node)
                    ):
                        not_matching.append(record.label)
                    elif record.taints and alt.signature.blocked_by_taint(record.taints):
                        tainted.append(record.label)
                    elif snapshot.in_use(record) and not alt.admin:
                        busy.append(index)
                    elif record.device.consumes_counters and not _counters_fit(snapshot, record):
                        no_counters.append(record.label)
                    else:
                        free.append(index)
                matching = len(free) + len(busy) + len(tainted) + len(no_counters)
                needed = matching if alt.all_mode else alt.count
                short = (not free or len(free) < matching) if alt.all_mode else len(free) < needed
                if short:
                    holders = [(records[i].label, _holder(snapshot, i)) for i in busy[:SHOWN_DEVICES]]
                    per_alt.append(
                        RequestUnsatisfiable(
                            claim=claim.label,
                            request=alt.name,
                            needed=needed,
                            all_mode=alt.all_mode,
                            usable=DeviceNames.of([records[i].label for i in free]),
                            in_use=tuple(holders),
                            in_use_total=len(busy),
                            tainted=DeviceNames.of(tainted),
                            no_counters=DeviceNames.of(no_counters),
                            not_matching=DeviceNames.of(not_matching)
                            if not free and not busy and not tainted
                            else DeviceNames(),
                            other_pools=skipped,
                        )
                    )
                elif not alt.admin and not satisfiable:
                    # Only the first alternative that works alone competes with other requests.
                    usable_sets.append((claim, alt, needed, set(free)))
                satisfiable = satisfiable or not short
            if len(per_alt) == len(request.alts):
                reasons.extend(per_alt)
    if not reasons:
        reasons.extend(_contention(snapshot, usable_sets))
    if not reasons:
        for claim in claims:
            for spec in claim.claim.spec.devices.constraints or ():
                reasons.append(ConstraintUnsatisfiable(claim.label, Constraint(spec).describe()))
    if not reasons and skipped:
        reasons.append(InvalidPools(skipped))
    if not reasons:
        reasons.append(NoCombination())
    return NodeFailure(node.name, tuple(reasons), snapshot.own_pools(node))


def _counters_fit(snapshot: Snapshot, record: DeviceRecord) -> bool:
    """Whether the device alone fits its pool's counters, given the allocated devices."""
    left = snapshot.counters_available(record)
    for consumption in record.device.consumes_counters or ():
        for name, counter in consumption.counters.items():
            left[(consumption.counter_set, name)] = left.get((consumption.counter_set, name), Fraction(0)) - (
                counter.value.value
            )
    return all(value >= 0 for value in left.values())


def _holder(snapshot: Snapshot, index: int) -> str:
    holders = snapshot.holders(snapshot.records[index])
    return "/".join(holders[0]) if holders else "?"


def _contention(snapshot: Snapshot, usable: list[tuple[_Claim, _Alt, int, set[int]]]) -> list[NodeReason]:
    """Groups of requests whose candidate devices overlap and that need more devices than the group offers."""
    groups: list[tuple[list[tuple[_Claim, _Alt, int]], set[int]]] = []
    for claim, alt, needed, devices in usable:
        merged = ([(claim, alt, needed)], set(devices))
        rest = []
        for group in groups:
            if group[1] & merged[1]:
                merged = (group[0] + merged[0], group[1] | merged[1])
            else:
                rest.append(group)
        groups = [*rest, merged]
    out: list[NodeReason] = []
    for members, devices in groups:
        if len(members) > 1 and sum(m[2] for m in members) > len(devices):
            ordered = sorted(devices)
            out.append(
                DevicesContended(
                    tuple((c.label, a.name, n, a.all_mode) for c, a, n in members),
                    DeviceNames.of([snapshot.records[i].label for i in ordered]),
                )
            )
    return out


# ------------------------------------------------------------------------------------------ the Pod


def allocate(
    snapshot: Snapshot,
    pod: PodRef,
    claims: Sequence[ResourceClaim],
    nodes: Collection[str | None] | None = None,
    placement: Placement = "first",
) -> Outcome:
    """Allocate all of a Pod's claims together on one node, or explain why not.

    `placement` chooses among the nodes with a solution (see the module docstring).

    Claims with `status.allocation` are reused: they are not allocated again and restrict the node to their
    `nodeSelector` (and are recorded in the snapshot if it did not know them yet). `nodes`, when given,
    limits the candidate nodes (e.g. a Pod's own node affinity). The snapshot is otherwise not changed;
    call `Allocation.commit(snapshot)` once the results are written.
    """
    unique: dict[ClaimKey, ResourceClaim] = {}
    for claim in claims:
        unique.setdefault(claim_key(claim), claim)
    allocated = [c for c in unique.values() if c.status is not None and c.status.allocation is not None]
    pending = [c for c in unique.values() if c.status is None or c.status.allocation is None]
    for claim in allocated:
        # An allocated claim the snapshot has not seen yet: its devices are in use all the same.
        known = snapshot.allocation_of(claim_key(claim)) is not None
        if not known and claim.status is not None and claim.status.allocation is not None:
            snapshot.record_allocation(claim_key(claim), claim.status.allocation)

    plans: list[_Claim] = []
    for claim in pending:
        plan = _plan(snapshot, claim)
        if isinstance(plan, ClassNotFound):
            return Unallocatable(Explanation(pod.label, fatal=plan))
        plans.append(plan)

    # A set given is used as it is: the operator keeps one per node constraint, and a copy would cost each
    # decision a pass over every node.
    allowed = nodes if isinstance(nodes, (set, frozenset)) or nodes is None else set(nodes)
    selectors = [
        (_claim_label(c), c.status.allocation.node_selector)
        for c in allocated
        if c.status is not None and c.status.allocation is not None and c.status.allocation.node_selector
    ]

    def blocking(node: Node) -> list[str]:
        """Allocated claims whose nodeSelector excludes the node."""
        return [label for label, selector in selectors if not selector_matches(selector, node)]

    def candidates(begin: int = 0, blocked_too: bool = False) -> Iterator[int]:
        for position in range(begin, len(snapshot.nodes)):
            node = snapshot.nodes[position]
            if allowed is not None and node.name not in allowed:
                continue
            if not blocked_too and selectors and blocking(node):
                continue
            yield position

    def excluded() -> list[NodeFailure]:
        found = []
        for node in snapshot.nodes:
            if allowed is not None and node.name not in allowed:
                continue
            labels = blocking(node)
            if labels:
                found.append(NodeFailure(node.name, tuple(ClaimNotOnNode(label) for label in labels)))
        return found

    reused = tuple(claim_key(c) for c in allocated)

    first = next(candidates(), None)
    if not plans:
        if first is not None:
            return Allocation(snapshot.nodes[first].name, {}, reused)
        left_out = excluded()
        return Unallocatable(
            Explanation(pod.label, nodes=tuple(left_out[:DETAILED_NODES]), nodes_total=len(left_out))
        )

    if next(candidates(blocked_too=True), None) is not None:
        # Without All requests the device count is the same on every node: fail before skipping any node.
        for plan in plans:
            if any(alt.all_mode for request in plan.requests for alt in request.alts):
                continue
            minimum = sum(min(alt.count for alt in request.alts) for request in plan.requests)
            if minimum > RESULTS_MAX:
                return Unallocatable(
                    Explanation(pod.label, fatal=TooManyDevices(plan.label, minimum, RESULTS_MAX))
                )

    alts = [alt for plan in plans for request in plan.requests for alt in request.alts]
    full_scan = any(alt.all_mode for alt in alts) or any(snapshot.has_failures(alt.signature) for alt in alts)
    # Requests every solution must serve from their own candidates: those bound how far the scan can skip.
    needs: dict[RequestSignature, int] = {}
    for plan in plans:
        for request in plan.requests:
            if request.first_available:
                continue
            alt = request.alts[0]
            if not alt.admin and not alt.all_mode:
                needs[alt.signature] = needs.get(alt.signature, 0) + alt.count
    start = 0 if full_scan else max((snapshot.frontier(sig) for sig in needs), default=0)

    chosen: tuple[Node, _NodeSearch] | None = None

    # Kubernetes runs the allocator on a node even when an allocated claim rules the node out (the claim
    # only fails the node afterwards), so when errors are possible those nodes are searched too.
    def fits(position: int) -> bool:  # enough free candidates: cheap, and no node short of them is searched
        node = snapshot.nodes[position]
        return full_scan or all(snapshot.free_candidates(sig, node) >= n for sig, n in needs.items())

    order: Iterable[int]
    if placement == "first" or not needs:
        order = (p for p in candidates(start, blocked_too=full_scan) if fits(p))
    elif not full_scan:
        # The snapshot keeps the nodes ranked by free candidates for these needs, best first.
        order = (
            p
            for p in snapshot.ranked(needs, most_first=placement == "spread")
            if (allowed is None or snapshot.nodes[p].name in allowed)
            and not (selectors and blocking(snapshot.nodes[p]))
        )
    else:
        # A full scan searches every node anyway: rank them all by their sum of free candidates.
        free: dict[int, int] = {}
        for position in candidates(start, blocked_too=True):
            node = snapshot.nodes[position]
            free[position] = sum(snapshot.free_candidates(sig, node) for sig in needs)
        order = sorted(
            free, key=(lambda p: (free[p], p)) if placement == "binpack" else (lambda p: (-free[p], p))
        )
    for position in order:
        node = snapshot.nodes[position]
        search = _NodeSearch(snapshot, node, plans)
        try:
            found = search.run()
        except _Fatal as fatal:
            return Unallocatable(Explanation(pod.label, fatal=fatal.reason))
        if found and chosen is None and not (selectors and blocking(node)):
            chosen = (node, search)
            if not full_scan:
                break

    if chosen is not None:
        node, search = chosen
        results = dict(zip((p.key for p in plans), search.allocation_results(), strict=True))
        return Allocation(node.name, results, reused)

    positions = list(candidates())
    left_out = excluded()
    detailed = [_diagnose(snapshot, snapshot.nodes[p], plans) for p in positions[:DETAILED_NODES]]
    shown = (detailed + left_out)[:DETAILED_NODES]
    return Unallocatable(
        Explanation(pod.label, nodes=tuple(shown), nodes_total=len(positions) + len(left_out))
    )
