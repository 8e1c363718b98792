"""The bridge from the operator's cached dicts to the core allocator (dra_operator.allocation) and back.

Slices from the operator's caches come parsed (operator.slices). Classes, taint rules and other slices are
parsed once and cached one per object (by uid, with the version they were parsed from: a slice's generation,
since our status writes change no spec, else its resourceVersion); of a claim, only its parsed allocation is
kept, until the claim goes. The allocator's Snapshot is kept while classes, slices and nodes are unchanged,
and only the claims whose allocation changed since the last Pod are recorded or released in it, so a Pod's
turn costs its own search, not a rebuild over every device. An object that fails validation is left out
(and logged once)."""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from dra_operator.allocation.explain import ClassNotFound, SelectorError
from dra_operator.allocation.nodes import Node
from dra_operator.allocation.search import Allocation, Placement, PodRef, allocate
from dra_operator.allocation.selectors import SelectorCache
from dra_operator.allocation.snapshot import Snapshot
from dra_operator.allocation.taints import RuleTaints, rule_taints
from dra_operator.api.resource import (
    AllocationResult,
    DeviceAllocationResult,
    DeviceClass,
    DeviceTaintRule,
    InvalidObject,
    ResourceClaim,
    ResourceSlice,
    load_object,
)
from dra_operator.operator.slices import CachedSlice
from dra_operator.operator.state import CLAIMS, State

log = structlog.get_logger("dra_operator.allocating")
Json = dict[str, Any]

NVIDIA_DRIVER = "gpu.nvidia.com"
#: The most nodes whose slices one decision swaps in place; past it a rebuild costs no more.
REPLACE_NODES_MAX = 64
#: A kept snapshot is rebuilt once its replaced device records (about 0.5 KiB each) outnumber both its live
#: ones and this.
REPLACED_RECORDS_MAX = 10_000


@dataclass
class AllocationRequest:
    pod: Json
    claims: Mapping[str, Json]  # Pod claim name -> ResourceClaim dict
    classes: Sequence[Json]
    slices: Sequence[Json]
    nodes: Sequence[Json]  # every node
    candidates: Collection[str]  # names of the nodes the Pod's own constraints allow
    all_claims: Sequence[Json]  # every claim, for the devices in use (ignored when `state` is given)
    taint_rules: Sequence[Json] = ()  # every DeviceTaintRule
    # The operator's caches: the devices in use are then brought up to date from the claims changed since
    # the previous request (State.changes), not by a pass over every claim.
    state: State | None = None

    def claims_in_use(self) -> Sequence[Json]:
        """Every claim (the caches' when given): what allocators without a journal read."""
        return list(self.state.all(CLAIMS)) if self.state is not None else self.all_claims


@dataclass
class Placed:
    node: str | None
    allocations: dict[str, Json]  # Pod claim name -> status.allocation, for newly allocated claims only
    gpu_uuids: dict[tuple[str, str, str], str] = field(default_factory=dict)


@dataclass
class Failure:
    reason: str  # the event reason: AllocationFailed, ClassNotFound, InvalidSelector, InvalidClaim
    message: str


class Allocator:
    def __init__(self, nvidia_driver: str = NVIDIA_DRIVER, placement: Placement = "binpack") -> None:
        self.nvidia_driver = nvidia_driver
        self.placement: Placement = placement
        self.selectors = SelectorCache()  # compiled selectors and results per device version
        # uid -> (version, model): one per object, so a new version replaces the old instead of piling up
        # beside it (at 5,000 slices each status write of the free-devices view parsed a second copy).
        self._models: dict[str, tuple[str, Any]] = {}
        self._bad: set[tuple[str, str]] = set()
        self._snapshot: Snapshot | None = None
        self._signature: Any = None
        self._inputs: tuple[Sequence[Json], ...] | None = None  # the lists `_signature` was computed from
        self._recorded: dict[tuple[str, str], str] = {}  # claim key -> the token recorded in the snapshot
        # claim key -> (token, its parsed allocation): kept across snapshots; a rebuild parses no claim again.
        self._allocations: dict[tuple[str, str], tuple[str, AllocationResult]] = {}
        self._uuids: dict[tuple[str, str, str], str] = {}
        self._rule_taints: tuple[Any, RuleTaints] | None = None  # (signature, what the rules taint)
        self._cursor: tuple[int, int] | None = None  # (state epoch, revision) the in-use devices reflect
        self.rebuilds = 0
        # Whether a change of some nodes' own slices updates the kept snapshot in place (replace_node_slices)
        # instead of rebuilding it; off only to measure the difference (bench/decision_cost.py).
        self.replace_slices = True
        self.replacements = 0  # nodes whose slices were swapped in place
        self._slice_nodes: dict[str, str | None] = {}  # slice uid -> its spec.nodeName, as of `_signature`

    def _model(self, obj: Json) -> Any:
        """The parsed `obj` (a class, slice or taint rule), cached per uid while its version stays; a slice
        from the caches comes parsed."""
        if isinstance(obj, CachedSlice) and obj.model is not None:
            return obj.model
        meta = obj.get("metadata") or {}
        uid = str(meta.get("uid"))
        version = (
            f"generation {meta['generation']}"
            if obj.get("kind") == "ResourceSlice" and meta.get("generation")
            else str(meta.get("resourceVersion"))
        )
        cached = self._models.get(uid)
        if cached is not None and cached[0] == version:
            return cached[1]
        model = self._parsed(obj, uid, version)
        if model is None:
            return None
        if len(self._models) > 100_000:  # objects gone without a release (slices, classes): start afresh
            self._models.clear()
        self._models[uid] = (version, model)
        return model

    def _claim(self, obj: Json) -> Any:
        """A claim, parsed afresh: each write gives it a new version, and what outlives a decision is its
        allocation (`_allocations`), not the whole model (about 12 KiB per claim, issue 14)."""
        meta = obj.get("metadata") or {}
        return self._parsed(obj, str(meta.get("uid")), str(meta.get("resourceVersion")))

    def _parsed(self, obj: Json, uid: str, version: str) -> Any:
        try:
            return load_object(obj)
        except InvalidObject as exc:
            if (uid, version) not in self._bad:
                self._bad.add((uid, version))
                log.warning("object ignored: invalid", error=str(exc))
            return None

    def _models_of(self, objs: Sequence[Json], kind: type) -> list[Any]:
        return [m for m in (self._model(o) for o in objs) if isinstance(m, kind)]

    def allocate(self, req: AllocationRequest) -> Placed | Failure:
        claims: dict[str, ResourceClaim] = {}
        for pod_claim, obj in req.claims.items():
            model = self._claim(obj)
            if not isinstance(model, ResourceClaim):
                return Failure("InvalidClaim", f"ResourceClaim {obj['metadata'].get('name')} is not valid")
            claims[pod_claim] = model
        if not req.candidates:
            return Failure("AllocationFailed", "no node satisfies the Pod's own node selector and affinity")
        snapshot = self._current_snapshot(req)
        meta = req.pod["metadata"]
        outcome = allocate(
            snapshot,
            PodRef(meta["namespace"], meta["name"], meta.get("uid", "")),
            list(claims.values()),
            req.candidates,
            placement=self.placement,
        )
        if not isinstance(outcome, Allocation):
            explanation = outcome.explanation
            reason = "AllocationFailed"
            if isinstance(explanation.fatal, ClassNotFound):
                reason = "ClassNotFound"
            elif isinstance(explanation.fatal, SelectorError):
                reason = "InvalidSelector"
            # The event gets one line that fits its 1024 characters; when that had to leave detail out, the
            # log has every node's reasons.
            summary = explanation.summary()
            if summary != explanation.summary(limit=1 << 30):
                log.info(
                    "allocation failed", pod=f"{meta['namespace']}/{meta['name']}", why=explanation.render()
                )
            return Failure(reason, summary)
        by_key = {(c.metadata.namespace, c.metadata.name): pod_claim for pod_claim, c in claims.items()}
        allocations = {
            by_key[key]: result.model_dump(by_alias=True, exclude_none=True, mode="json")
            for key, result in outcome.results.items()
            if key in by_key
        }
        return Placed(node=outcome.node_name, allocations=allocations, gpu_uuids=self._uuids)

    def allocate_group(self, requests: Sequence[AllocationRequest]) -> list[Placed] | tuple[int, Failure]:
        """Allocate several Pods' claims as one decision (a gang): each Pod in turn sees the devices the Pods
        before it were given, and a claim two of them share is allocated once. Returns every Pod's placement,
        or the index of the first Pod that does not fit with why; the tentative choices are undone either
        way (the caller writes the claims, and the snapshot learns them from their new versions)."""
        tentative: list[tuple[str, str]] = []
        decided: dict[tuple[str, str], Json] = {}
        placed: list[Placed] = []
        try:
            for index, req in enumerate(requests):
                claims = {pc: _with_allocation(c, decided) for pc, c in req.claims.items()}
                outcome = self.allocate(replace(req, claims=claims))
                if isinstance(outcome, Failure):
                    return index, outcome
                placed.append(outcome)
                for pod_claim, allocation in outcome.allocations.items():
                    meta = claims[pod_claim]["metadata"]
                    key = (str(meta.get("namespace") or ""), str(meta["name"]))
                    decided[key] = allocation
                    if self._snapshot is None:  # allocate() built it
                        raise RuntimeError("no snapshot after an allocation")
                    self._snapshot.record_allocation(key, AllocationResult.model_validate(allocation))
                    tentative.append(key)
            return placed
        finally:
            if self._snapshot is not None:
                for key in tentative:
                    self._snapshot.release(key)

    def slice_models(self, slices: Sequence[Json]) -> list[ResourceSlice]:
        """The valid slices as models (cached per version, shared with allocation)."""
        return self._models_of(slices, ResourceSlice)

    def rule_taints(self, slices: Sequence[Json], rules: Sequence[Json]) -> RuleTaints:
        """What the DeviceTaintRules taint in these slices; kept while slices and rules are unchanged."""
        if not rules:
            return RuleTaints()  # no signature over every slice for nothing to find
        signature = (_spec_versions(slices), _versions(rules))
        if self._rule_taints is None or self._rule_taints[0] != signature:
            found = rule_taints(
                self._models_of(rules, DeviceTaintRule),
                self._models_of(slices, ResourceSlice),
                self.selectors,
            )
            self._rule_taints = (signature, found)
        return self._rule_taints[1]

    def _current_snapshot(self, req: AllocationRequest) -> Snapshot:
        """The kept Snapshot, rebuilt when classes, slices, taint rules or nodes changed, with in-use devices
        brought up to date claim by claim."""
        # The operator hands the same lists while none of them changed (Reconciler._static_inputs): their
        # signature, a sort over every slice and node (5,000 of each: milliseconds per decision), is kept.
        inputs = (req.classes, req.slices, req.taint_rules, req.nodes)
        if self._inputs is not None and all(a is b for a, b in zip(inputs, self._inputs, strict=True)):
            signature = self._signature
        else:
            signature = (
                _versions(req.classes),
                _spec_versions(req.slices),
                _versions(req.taint_rules),
                # Per node its labels' hash, not a copy of them kept: 30 labels took 2 KiB per node.
                tuple(
                    sorted(
                        (n["metadata"]["name"], hash(frozenset((n["metadata"].get("labels") or {}).items())))
                        for n in req.nodes
                    )
                ),
            )
            self._inputs = inputs
        if self._snapshot is None or (
            signature != self._signature and not self._replace_slices(req, signature)
        ):
            self._snapshot = Snapshot.build(
                self._models_of(req.classes, DeviceClass),
                self._models_of(req.slices, ResourceSlice),
                [Node.from_object(n) for n in req.nodes],
                (),
                cache=self.selectors,
                extra_taints=self.rule_taints(req.slices, req.taint_rules).by_device
                if req.taint_rules
                else None,
            )
            self.selectors.retain(self._snapshot.tokens())
            self._signature = signature
            self._recorded = {}
            self._uuids = self._gpu_uuids(req.slices)
            self._slice_nodes = _slice_nodes(req.slices)
            self._cursor = None
            self.rebuilds += 1
        snapshot = self._snapshot
        state = req.state
        if state is not None and self._cursor is not None and self._cursor[0] == state.epoch:
            revision, keys = state.changes(CLAIMS, self._cursor[1])
            for key in keys:
                self._sync_claim(snapshot, key, state.get(CLAIMS, key), state)
            self._cursor = (state.epoch, revision)
            return snapshot
        # A full pass: after a rebuild, without the caches, or when the journal's epoch moved.
        self._cursor = (state.epoch, state.revision) if state is not None else None
        present = set()
        for obj in req.claims_in_use():
            key = _claim_key(obj)
            present.add(key)
            self._sync_claim(snapshot, key, obj, state)
        for key in [k for k in self._recorded if k not in present]:
            snapshot.release(key)
            del self._recorded[key]
        for key in [k for k in self._allocations if k not in present]:
            del self._allocations[key]
        return snapshot

    def _replace_slices(self, req: AllocationRequest, signature: Any) -> bool:
        """Bring the kept snapshot up to date in place when only some nodes' own slices changed (an agent
        republished its node): True when done, False when it takes a rebuild (see replace_node_slices)."""
        before = self._signature
        if not self.replace_slices or self._snapshot is None or before is None:
            return False
        if (before[0], before[2], before[3]) != (signature[0], signature[2], signature[3]):
            return False  # classes, taint rules or nodes changed too
        changed = {uid for uid, _ in set(before[1]) ^ set(signature[1])}
        # changed slice uid -> its node now (absent: deleted)
        now = {uid: node for uid, node in _slice_nodes(req.slices).items() if uid in changed}
        nodes = {self._slice_nodes.get(uid) for uid in changed} | set(now.values())
        if None in nodes or len(nodes) > REPLACE_NODES_MAX:
            return False  # a slice of no single node changed, or so many nodes that a rebuild is as cheap
        snapshot = self._snapshot
        # The rules' taints after the change (a pass over every device, 10.9 ms at 5,000 slices).
        taints = self.rule_taints(req.slices, req.taint_rules).by_device if req.taint_rules else None
        by_node: dict[str, list[Json]] = {}
        for obj in req.slices:
            node = (obj.get("spec") or {}).get("nodeName")
            if isinstance(node, str) and node in nodes:
                by_node.setdefault(node, []).append(obj)
        for node in sorted(n for n in nodes if n is not None):
            models = self._models_of(by_node.get(node, []), ResourceSlice)
            if not snapshot.replace_node_slices(node, models, taints):
                return False  # the caller rebuilds; what was replaced so far goes with the old snapshot
            self._uuids.update(self._gpu_uuids(by_node.get(node, [])))
            self.replacements += 1
        replaced = snapshot.replaced_records
        if replaced > max(len(snapshot.records) - replaced, REPLACED_RECORDS_MAX):
            return False  # more replaced records than live ones: a rebuild frees them
        self._signature = signature
        for uid in changed:
            if uid in now:
                self._slice_nodes[uid] = now[uid]
            else:
                self._slice_nodes.pop(uid, None)
        return True

    def _sync_claim(
        self, snapshot: Snapshot, key: tuple[str, str], obj: Json | None, state: State | None
    ) -> None:
        """Bring one claim's devices in use up to date in the snapshot (gone or unallocated: released)."""
        allocation = None
        token = ""
        if obj is not None and (obj.get("status") or {}).get("allocation"):
            meta = obj.get("metadata") or {}
            token = f"{meta.get('uid')}/{meta.get('resourceVersion')}/{_assumption(state, obj)}"
            if self._recorded.get(key) == token:
                return
            held = self._allocations.get(key)
            if held is not None and held[0] == token:
                allocation = held[1]
            else:
                model = self._claim(obj)
                if isinstance(model, ResourceClaim) and model.status is not None and model.status.allocation:
                    allocation = _devices_only(model.status.allocation)
                    self._allocations[key] = (token, allocation)
        if allocation is None:
            self._allocations.pop(key, None)
            if key in self._recorded:
                snapshot.release(key)
                del self._recorded[key]
        else:
            snapshot.record_allocation(key, allocation)
            self._recorded[key] = token

    def _gpu_uuids(self, slices: Sequence[Json]) -> dict[tuple[str, str, str], str]:
        uuids: dict[tuple[str, str, str], str] = {}
        for slice_ in self._models_of(slices, ResourceSlice):
            spec = slice_.spec
            if spec.driver != self.nvidia_driver:
                continue
            for device in spec.devices or ():
                attrs = device.attributes or {}
                uuid = attrs.get("uuid") or attrs.get(f"{self.nvidia_driver}/uuid")
                if uuid is not None and uuid.string:
                    uuids[(self.nvidia_driver, spec.pool.name, device.name)] = uuid.string
        return uuids


def _slice_nodes(slices: Sequence[Json]) -> dict[str, str | None]:
    """Slice uid -> spec.nodeName (None: not a node-local slice)."""
    return {
        str((o.get("metadata") or {}).get("uid")): (o.get("spec") or {}).get("nodeName") or None
        for o in slices
    }


def _devices_only(allocation: AllocationResult) -> AllocationResult:
    """What the snapshot reads of an allocation it keeps: the device results. The node selector and the
    config, which the claim holds, were half of each kept model (1.9 KiB per claim without config)."""
    return AllocationResult.model_construct(
        devices=DeviceAllocationResult.model_construct(results=allocation.devices.results)
    )


def _spec_versions(objs: Sequence[Json]) -> tuple[tuple[str, str], ...]:
    """Like _versions, by metadata.generation where there is one: the operator writes slices' status (the
    free-devices view), and a status write must not rebuild the snapshot nor evaluate CEL again."""
    return tuple(
        sorted(
            (
                str(o["metadata"].get("uid")),
                f"generation {o['metadata']['generation']}"
                if o["metadata"].get("generation")
                else str(o["metadata"].get("resourceVersion")),
            )
            for o in objs
        )
    )


def _assumption(state: State | None, claim: Json) -> int | None:
    """The state's serial number for `claim` if it is an assumed one (see State.assumption)."""
    return state.assumption(CLAIMS, claim) if state is not None else None


def _claim_key(obj: Json) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name")))


def _versions(objs: Sequence[Json]) -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted((str(o["metadata"].get("uid")), str(o["metadata"].get("resourceVersion"))) for o in objs)
    )


def _with_allocation(claim: Json, decided: Mapping[tuple[str, str], Json]) -> Json:
    """The claim as it will be once an earlier Pod of the same decision allocated it (a shared claim), under a
    resourceVersion of its own so the parsed-model cache does not answer with the unallocated version."""
    meta = claim.get("metadata") or {}
    allocation = decided.get((str(meta.get("namespace") or ""), str(meta.get("name"))))
    if allocation is None:
        return claim
    claim = copy.deepcopy(claim)
    claim["metadata"]["resourceVersion"] = f"{meta.get('resourceVersion')}+decided"
    claim["status"] = {**(claim.get("status") or {}), "allocation": allocation}
    return claim
