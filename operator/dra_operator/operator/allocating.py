"""The bridge from the operator's cached dicts to the core allocator (dra_operator.allocation) and back.

Parsed models are cached per (uid, resourceVersion), so a Pod's turn costs a snapshot build over already
validated objects, not a re-validation of every slice. An object that fails validation is left out (and
logged once).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from dra_operator.api.resource import DeviceClass, InvalidObject, ResourceClaim, ResourceSlice, load_object

log = structlog.get_logger("dra_operator.allocating")
Json = dict[str, Any]

NVIDIA_DRIVER = "gpu.nvidia.com"


@dataclass
class AllocationRequest:
    pod: Json
    claims: Mapping[str, Json]  # Pod claim name -> ResourceClaim dict
    classes: Sequence[Json]
    slices: Sequence[Json]
    nodes: Sequence[Json]  # the nodes the Pod's own constraints allow
    all_claims: Sequence[Json]  # every claim, for the devices in use


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
    def __init__(self, nvidia_driver: str = NVIDIA_DRIVER) -> None:
        self.nvidia_driver = nvidia_driver
        self.selectors: Any = None  # the CEL compile cache, made on first use
        self._models: dict[tuple[str, str], Any] = {}
        self._bad: set[tuple[str, str]] = set()

    def _model(self, obj: Json) -> Any:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("uid")), str(meta.get("resourceVersion")))
        if key in self._models:
            return self._models[key]
        try:
            model = load_object(obj)
        except InvalidObject as exc:
            if key not in self._bad:
                self._bad.add(key)
                log.warning("object ignored: invalid", error=str(exc))
            return None
        if len(self._models) > 50_000:
            self._models.clear()
        self._models[key] = model
        return model

    def _models_of(self, objs: Sequence[Json], kind: type) -> list[Any]:
        return [m for m in (self._model(o) for o in objs) if isinstance(m, kind)]

    def allocate(self, req: AllocationRequest) -> Placed | Failure:
        # Imported here so the shell's other modules (and their unit tests) load without the CEL runtime.
        from dra_operator.allocation.explain import ClassNotFound, SelectorError
        from dra_operator.allocation.nodes import Node
        from dra_operator.allocation.search import Allocation, PodRef, allocate
        from dra_operator.allocation.selectors import SelectorCache
        from dra_operator.allocation.snapshot import Snapshot

        if self.selectors is None:
            self.selectors = SelectorCache()

        claims: dict[str, ResourceClaim] = {}
        for pod_claim, obj in req.claims.items():
            model = self._model(obj)
            if not isinstance(model, ResourceClaim):
                return Failure("InvalidClaim", f"ResourceClaim {obj['metadata'].get('name')} is not valid")
            claims[pod_claim] = model
        if not req.nodes:
            return Failure("AllocationFailed", "no node satisfies the Pod's own node selector and affinity")
        snapshot = Snapshot.build(
            self._models_of(req.classes, DeviceClass),
            self._models_of(req.slices, ResourceSlice),
            [Node.from_object(n) for n in req.nodes],
            self._models_of(req.all_claims, ResourceClaim),
            cache=self.selectors,
        )
        meta = req.pod["metadata"]
        outcome = allocate(
            snapshot,
            PodRef(meta["namespace"], meta["name"], meta.get("uid", "")),
            list(claims.values()),
            [n["metadata"]["name"] for n in req.nodes],
        )
        if not isinstance(outcome, Allocation):
            explanation = outcome.explanation
            reason = "AllocationFailed"
            if isinstance(explanation.fatal, ClassNotFound):
                reason = "ClassNotFound"
            elif isinstance(explanation.fatal, SelectorError):
                reason = "InvalidSelector"
            return Failure(reason, explanation.render())
        by_key = {(c.metadata.namespace, c.metadata.name): pod_claim for pod_claim, c in claims.items()}
        allocations = {
            by_key[key]: result.model_dump(by_alias=True, exclude_none=True, mode="json")
            for key, result in outcome.results.items()
            if key in by_key
        }
        return Placed(node=outcome.node_name, allocations=allocations, gpu_uuids=self._gpu_uuids(req.slices))

    def _gpu_uuids(self, slices: Sequence[Json]) -> dict[tuple[str, str, str], str]:
        uuids: dict[tuple[str, str, str], str] = {}
        for obj in slices:
            spec = obj.get("spec") or {}
            if spec.get("driver") != self.nvidia_driver:
                continue
            pool = str((spec.get("pool") or {}).get("name"))
            for device in spec.get("devices") or []:
                attrs = device.get("attributes") or {}
                uuid = attrs.get("uuid") or attrs.get(f"{self.nvidia_driver}/uuid") or {}
                if isinstance(uuid, dict) and uuid.get("string"):
                    uuids[(self.nvidia_driver, pool, str(device.get("name")))] = str(uuid["string"])
        return uuids
