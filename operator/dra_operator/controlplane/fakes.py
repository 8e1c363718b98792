"""Stand-ins for real machines: Ready fake Node manifests (no kubelet), node-local GPU ResourceSlices (no node
agent), and the pod status a kubelet sets; and manifests put in the form an older release decodes."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from dra_operator.api.pod import pod_spec_of

# Generous defaults (kwok uses similar ones) so capacity never limits scheduling unless a test asks it to.
# `pods` matters most: a Node without allocatable pods fits no Pod at all ("Too many pods").
DEFAULT_CAPACITY: Mapping[str, str] = {"cpu": "32", "memory": "256Gi", "pods": "110"}


def node_manifest(
    name: str,
    labels: Mapping[str, str] | None = None,
    capacity: Mapping[str, str] | None = None,
    allocatable: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A Node whose status (set on create, which the API allows for Nodes) says Ready with the given capacity.

    `capacity` entries override/extend DEFAULT_CAPACITY; `allocatable` defaults to the capacity. The
    controller manager runs without node lifecycle, so Ready is never aged out for lack of heartbeats.
    """
    full_capacity = {**DEFAULT_CAPACITY, **(capacity or {})}
    node_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "fake"}
    node_labels.update(labels or {})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": node_labels},
        "spec": {},
        "status": {
            "capacity": full_capacity,
            "allocatable": {**full_capacity, **(allocatable or {})},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "FakeNodeReady",
                    "message": "fake node created by dra-operator (no kubelet)",
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "fake://0",
                "kernelVersion": "",
                "osImage": "fake",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        },
    }


def gpu_slice_manifest(
    node: str,
    gpus: Mapping[str, str],
    *,
    driver: str = "driver.example.com",
    api_version: str = "resource.dra-operator.io/v1",
    name: str | None = None,
) -> dict[str, Any]:
    """One node-local ResourceSlice (pool = node) of `type: gpu` devices: device name -> memory capacity."""
    return {
        "apiVersion": api_version,
        "kind": "ResourceSlice",
        "metadata": {"name": name or f"{node}-{driver.replace('.', '-')}"},
        "spec": {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": [
                {
                    "name": device,
                    "attributes": {"type": {"string": "gpu"}},
                    "capacity": {"memory": {"value": memory}},
                }
                for device, memory in gpus.items()
            ],
        },
    }


def pod_succeeded_status(pod: Mapping[str, Any]) -> dict[str, Any]:
    """A status patch finishing a bound Pod as a kubelet would (there is none): phase Succeeded, exit 0."""
    containers = pod.get("spec", {}).get("containers", [])
    return {
        "status": {
            "phase": "Succeeded",
            "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container.get("image", ""),
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
                }
                for container in containers
            ],
        }
    }


def in_claim_form(obj: dict[str, Any], minor: int) -> dict[str, Any]:
    """`obj` (a Pod, Job or other workload written with the flat claim fields of Kubernetes 1.31+) with its
    `spec.resourceClaims` in the form the release `1.<minor>` decodes: under `source:` on 1.30 (a copy)."""
    if minor > 30:
        return obj
    converted = copy.deepcopy(obj)
    spec = pod_spec_of(converted)
    for index, ref in enumerate(spec.get("resourceClaims") or []):
        source = {
            key: ref.pop(key) for key in ("resourceClaimName", "resourceClaimTemplateName") if key in ref
        }
        spec["resourceClaims"][index] = {**ref, "source": source}
    return converted
