"""Node delivery read off a Pod: which containers the device plugin serves, with which devices, and which
Pod a node's plugin is serving now. Pure functions over Pod dicts, shared by the operator and the plugin.

How an Allocate call is tied to its Pod. The kubelet names only the device IDs it picked from what the plugin
advertises (here: interchangeable slots, one per container that uses claims), never the Pod. So the operator
ungates at most one Pod per node whose devices are still to be delivered ("in delivery": ungated by the
operator, bound or pinned to that node, not yet admitted by the kubelet, i.e. no container status yet, and
ungated less than DELIVERY_TIMEOUT ago). The kubelet admits Pods one at a time and calls Allocate for their
containers in order (init containers, then containers); the plugin serves the one Pod in delivery on its
node, container after container. When two are in delivery at once (the timeout passed, or an operator
without the device plugin flag) the plugin refuses: the kubelet fails that Pod's admission instead of handing
a container another Pod's devices.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dra_operator.admission import names

Json = dict[str, Any]

#: Seconds a Pod may stay "in delivery" before the next Pod for its node is ungated anyway (a Pod the kubelet
#: never admits must not block its node for good).
DELIVERY_TIMEOUT = 60.0
_ANNOTATION_REF = re.compile(r"^metadata\.annotations\['([^']+)'\]$")


@dataclass(frozen=True)
class ContainerDevices:
    """What one container is to get: its claims' devices (`driver/pool/device`) and its NVML GPU UUIDs."""

    container: str
    devices: tuple[str, ...] = ()
    gpu_uuids: tuple[str, ...] = ()


@dataclass
class Served:
    """The plugin's memory of the Pods it served: Pod uid -> containers delivered so far."""

    containers: dict[str, int] = field(default_factory=dict)


def _spec(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = pod.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = pod.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _containers(pod: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    """Init containers, then containers: the order in which the kubelet allocates devices."""
    for key in ("initContainers", "containers"):
        for container in _spec(pod).get(key) or []:
            if isinstance(container, Mapping):
                yield container


def asks_for_delivery(container: Mapping[str, Any], resource: str = names.DEVICE_PLUGIN_RESOURCE) -> bool:
    resources = container.get("resources")
    limits = resources.get("limits") if isinstance(resources, Mapping) else None
    return isinstance(limits, Mapping) and resource in limits


def delivery_containers(pod: Mapping[str, Any], resource: str = names.DEVICE_PLUGIN_RESOURCE) -> list[str]:
    """Names of the containers the plugin serves, in the kubelet's order."""
    return [str(c.get("name")) for c in _containers(pod) if asks_for_delivery(c, resource)]


def container_devices(pod: Mapping[str, Any], container_name: str) -> ContainerDevices:
    """What the container was allocated, read exactly as the container itself reads it: the annotations its
    DRA_<CLAIM>_DEVICES and NVIDIA_VISIBLE_DEVICES env vars point at (the webhook wrote those references, the
    operator the values)."""
    annotations = _meta(pod).get("annotations")
    annotations = annotations if isinstance(annotations, Mapping) else {}
    container = next((c for c in _containers(pod) if c.get("name") == container_name), None)
    devices: list[str] = []
    uuids: list[str] = []
    for item in (container or {}).get("env") or []:
        if not isinstance(item, Mapping):
            continue
        ref = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        match = _ANNOTATION_REF.match(ref) if isinstance(ref, str) else None
        if not match:
            continue
        key = match.group(1)
        value = annotations.get(key)
        if not isinstance(value, str) or not value:
            continue
        if key.startswith(names.DEVICES_ANNOTATION_PREFIX):
            devices += [d for d in value.split(",") if d and d not in devices]
        elif key.startswith(names.NVIDIA_ANNOTATION_PREFIX) and value != names.NVIDIA_NONE:
            uuids += [u for u in value.split(",") if u and u not in uuids]
    return ContainerDevices(str(container_name), tuple(devices), tuple(uuids))


def _ungated_at(pod: Mapping[str, Any]) -> datetime.datetime | None:
    annotations = _meta(pod).get("annotations")
    raw = annotations.get(names.UNGATED_AT_ANNOTATION) if isinstance(annotations, Mapping) else None
    try:
        return datetime.datetime.fromisoformat(str(raw).replace("Z", "+00:00")) if raw else None
    except ValueError:
        return None


def node_of(pod: Mapping[str, Any]) -> str | None:
    """The node a Pod runs on, or is pinned to by the operator before kube-scheduler binds it."""
    node = _spec(pod).get("nodeName")
    if node:
        return str(node)
    annotations = _meta(pod).get("annotations")
    pinned = annotations.get(names.NODE_ANNOTATION) if isinstance(annotations, Mapping) else None
    return str(pinned) if pinned else None


def admitted(pod: Mapping[str, Any]) -> bool:
    """The kubelet has admitted (or refused) the Pod: it wrote container statuses, or a final phase."""
    status = pod.get("status")
    status = status if isinstance(status, Mapping) else {}
    if status.get("phase") in ("Running", "Succeeded", "Failed"):
        return True
    return bool(status.get("containerStatuses") or status.get("initContainerStatuses"))


def in_delivery(
    pod: Mapping[str, Any], now: datetime.datetime, resource: str = names.DEVICE_PLUGIN_RESOURCE
) -> bool:
    """Ungated by the operator, with containers to serve, not yet admitted, not deleted, and recent."""
    meta = _meta(pod)
    if meta.get("deletionTimestamp") or admitted(pod) or not delivery_containers(pod, resource):
        return False
    if any(isinstance(g, Mapping) and g.get("name") == names.SCHEDULING_GATE
           for g in _spec(pod).get("schedulingGates") or []):  # fmt: skip
        return False
    since = _ungated_at(pod)
    return since is not None and (now - since).total_seconds() < DELIVERY_TIMEOUT


def busy_with(
    pods: Iterable[Mapping[str, Any]], node: str, now: datetime.datetime, exclude_uid: str | None = None
) -> list[str]:
    """`namespace/name` of the Pods in delivery on `node` (other than `exclude_uid`)."""
    return [
        f"{_meta(p).get('namespace')}/{_meta(p).get('name')}"
        for p in pods
        if node_of(p) == node and _meta(p).get("uid") != exclude_uid and in_delivery(p, now)
    ]


class NotServable(Exception):
    """Allocate cannot be tied to exactly one Pod: the message says why (the kubelet shows it on the Pod)."""


def next_container(
    pods: Iterable[Mapping[str, Any]], node: str, served: Served, now: datetime.datetime
) -> tuple[Mapping[str, Any], str]:
    """The Pod in delivery on `node` and its next container not yet served. Raises NotServable when there is
    none, or more than one Pod could be meant."""
    candidates = [
        p
        for p in pods
        if node_of(p) == node
        and in_delivery(p, now)
        and served.containers.get(str(_meta(p).get("uid")), 0) < len(delivery_containers(p))
    ]
    if not candidates:
        raise NotServable(f"no Pod on node {node} is waiting for its devices (nothing to tie this call to)")
    if len(candidates) > 1:
        listed = ", ".join(sorted(f"{_meta(p).get('namespace')}/{_meta(p).get('name')}" for p in candidates))
        raise NotServable(f"several Pods on node {node} wait for their devices at once ({listed}): refused")
    pod = candidates[0]
    index = served.containers.get(str(_meta(pod).get("uid")), 0)
    return pod, delivery_containers(pod)[index]


def mark_served(served: Served, pod: Mapping[str, Any]) -> None:
    uid = str(_meta(pod).get("uid"))
    served.containers[uid] = served.containers.get(uid, 0) + 1


def forget_admitted(served: Served, pods: Iterable[Mapping[str, Any]]) -> None:
    """Forget Pods that are gone or admitted: bounded memory (a uid is never served twice anyway)."""
    waiting = {str(_meta(p).get("uid")) for p in pods if not admitted(p)}
    for uid in list(served.containers):
        if uid not in waiting:
            del served.containers[uid]


def timestamp(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
