"""Inventory -> ResourceSlice, and the pure plan that brings a node's existing slices to the desired ones.

One ResourceSlice per node and driver: pool = node name, resourceSliceCount = 1, generation bumped whenever
the content (devices, taints) changes. Slices are named deterministically and labelled, so a restarted agent
finds its own slices and never makes duplicates. The plan is pure (existing objects in, actions out);
publisher.py executes it against the API server.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from dra_operator.agent.inventory import DeviceInfo, Inventory, Version
from dra_operator.api.resource import API_VERSION, ResourceSlice

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "dra-operator-agent"
NODE_LABEL = "resource.dra-operator.io/node"
DRIVER_LABEL = "resource.dra-operator.io/driver"
MAX_NAME = 253
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _digest(*parts: str, length: int = 8) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:length]


def slice_name(node: str, driver: str) -> str:
    """`<node>-<driver with dots as dashes>-<hash>`, cut to 253 characters; the hash keeps cut names distinct.

    The hash covers node and driver, so `a` + `b-c.io` and `a-b` + `c.io` never share a name.
    """
    suffix = "-" + _digest(node, driver)
    stem = f"{node}-{driver.replace('.', '-')}".lower()
    stem = stem[: MAX_NAME - len(suffix)].rstrip("-.")
    return stem + suffix


def label_value(text: str) -> str:
    """`text` if it is a valid label value, else a stable digest of it (node names may be up to 253 chars)."""
    if len(text) <= 63 and _LABEL_VALUE_RE.match(text):
        return text
    return "sha256-" + _digest(text, length=40)


def node_selector(node: str) -> str:
    """The label selector that finds every slice this agent made for `node`."""
    return f"{MANAGED_BY_LABEL}={MANAGED_BY},{NODE_LABEL}={label_value(node)}"


def _attribute_json(value: object) -> dict[str, Any]:
    if isinstance(value, Version):
        return {"version": value.text}
    if isinstance(value, bool):  # before int: bool is an int in Python
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    return {"string": str(value)}


def device_json(device: DeviceInfo) -> dict[str, Any]:
    """A device in resource.k8s.io/v1 JSON form."""
    body: dict[str, Any] = {"name": device.name}
    if device.attributes:
        body["attributes"] = {key: _attribute_json(value) for key, value in device.attributes.items()}
    if device.capacity:
        body["capacity"] = {key: {"value": str(value)} for key, value in device.capacity.items()}
    if device.taints:
        body["taints"] = [
            {"key": t.key, "effect": t.effect, **({"value": t.value} if t.value is not None else {})}
            for t in device.taints
        ]
    return body


def build_slice(
    node: str, inventory: Inventory, *, generation: int = 1, node_uid: str | None = None
) -> ResourceSlice:
    """The ResourceSlice for one node and driver; owned by the Node when its uid is given.

    Raises pydantic's ValidationError (wrapped by callers) if a device breaks a Kubernetes limit.
    """
    metadata: dict[str, Any] = {
        "name": slice_name(node, inventory.driver),
        "labels": {
            MANAGED_BY_LABEL: MANAGED_BY,
            NODE_LABEL: label_value(node),
            DRIVER_LABEL: label_value(inventory.driver),
        },
    }
    if node_uid is not None:
        # Not a controller reference: the Node does not manage the slice, it only bounds its lifetime (GC).
        metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}]
    return ResourceSlice.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": "ResourceSlice",
            "metadata": metadata,
            "spec": {
                "driver": inventory.driver,
                "pool": {"name": node, "generation": generation, "resourceSliceCount": 1},
                "nodeName": node,
                "devices": [device_json(d) for d in inventory.devices],
            },
        }
    )


def slice_dict(resource_slice: ResourceSlice) -> dict[str, Any]:
    return resource_slice.model_dump(by_alias=True, exclude_none=True, mode="json")


# ------------------------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class Create:
    body: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])


@dataclass(frozen=True)
class Replace:
    """A full update with the read resourceVersion as precondition (a concurrent writer gets a 409)."""

    name: str
    body: dict[str, Any]
    content_changed: bool


@dataclass(frozen=True)
class Delete:
    name: str
    resource_version: str | None
    reason: str


Action = Create | Replace | Delete


def _parse(obj: dict[str, Any]) -> ResourceSlice | None:
    try:
        return ResourceSlice.model_validate(obj)
    except ValidationError:
        return None  # edited into something invalid: replaced by a fresh slice


def _content(resource_slice: ResourceSlice) -> tuple[Any, ...]:
    """What a generation covers: the devices (compared as models, so quantities compare by value)."""
    spec = resource_slice.spec
    return (spec.driver, spec.pool.name, spec.pool.resource_slice_count, spec.node_name, spec.devices or [])


def _meta_matches(current: ResourceSlice, desired: ResourceSlice) -> bool:
    def owners(rs: ResourceSlice) -> list[tuple[str, str, str]]:
        return [(o.kind, o.name, o.uid) for o in rs.metadata.owner_references or []]

    labels = current.metadata.labels or {}
    wanted = desired.metadata.labels or {}
    return owners(current) == owners(desired) and all(labels.get(k) == v for k, v in wanted.items())


def plan(
    node: str, node_uid: str | None, desired: Sequence[Inventory], existing: Sequence[dict[str, Any]]
) -> list[Action]:
    """Actions that turn `existing` (this agent's slices as listed) into one slice per desired non-empty pool.

    - a pool without devices has no slice;
    - the slice with the deterministic name is kept and updated in place; any other slice of ours for the same
      node and driver (a duplicate) is deleted;
    - the generation goes up by one when the content changes, and stays when only labels or owner change;
    - a slice whose immutable fields (driver, pool name, node name) differ, or that no longer validates, is
      deleted and created anew with a higher generation.
    """
    mine = [obj for obj in existing if (obj.get("spec") or {}).get("nodeName") == node]
    wanted = {inv.driver: inv for inv in desired if inv.devices}
    actions: list[Action] = []

    for obj in mine:
        driver = (obj.get("spec") or {}).get("driver")
        if driver not in wanted:
            actions.append(Delete(_name(obj), _rv(obj), f"driver {driver} has no devices on this node"))

    for driver, inventory in wanted.items():
        name = slice_name(node, driver)
        same_driver = [obj for obj in mine if (obj.get("spec") or {}).get("driver") == driver]
        keep = next((obj for obj in same_driver if _name(obj) == name), None)
        for obj in same_driver:
            if obj is not keep:
                actions.append(Delete(_name(obj), _rv(obj), f"duplicate slice for {node}/{driver}"))
        last_generation = max((_generation(obj) for obj in same_driver), default=0)
        current = _parse(keep) if keep is not None else None
        if keep is None or current is None or not _same_identity(current, node, driver):
            if keep is not None:
                actions.append(Delete(name, _rv(keep), "immutable fields differ or the slice is invalid"))
            fresh = build_slice(node, inventory, generation=last_generation + 1, node_uid=node_uid)
            actions.append(Create(slice_dict(fresh)))
            continue
        candidate = build_slice(node, inventory, generation=current.spec.pool.generation, node_uid=node_uid)
        changed = _content(candidate) != _content(current)
        if not changed and _meta_matches(current, candidate):
            continue  # nothing to write
        generation = current.spec.pool.generation + 1 if changed else current.spec.pool.generation
        body = slice_dict(build_slice(node, inventory, generation=generation, node_uid=node_uid))
        body["metadata"]["resourceVersion"] = _rv(keep)
        # Keep labels and annotations others added (e.g. kubectl label); ours win on conflict.
        body["metadata"]["labels"] = {
            **(keep.get("metadata", {}).get("labels") or {}),
            **body["metadata"]["labels"],
        }
        if annotations := keep.get("metadata", {}).get("annotations"):
            body["metadata"]["annotations"] = annotations
        actions.append(Replace(name, body, content_changed=changed))
    return actions


def _same_identity(current: ResourceSlice, node: str, driver: str) -> bool:
    spec = current.spec
    return spec.driver == driver and spec.pool.name == node and spec.node_name == node


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _rv(obj: dict[str, Any]) -> str | None:
    value = (obj.get("metadata") or {}).get("resourceVersion")
    return None if value is None else str(value)


def _generation(obj: dict[str, Any]) -> int:
    try:
        return int(((obj.get("spec") or {}).get("pool") or {}).get("generation", 0))
    except (TypeError, ValueError):
        return 0
