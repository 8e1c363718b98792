"""Names the webhook writes on Pods and the operator reads back: annotations, scheduling gate, label, env."""

from __future__ import annotations

import hashlib
import re

from dra_operator.api.group import GROUP

PREFIX = GROUP + "/"

#: JSON manifest of the claim references moved off the Pod (see mutation.ClaimsManifest).
CLAIMS_ANNOTATION = PREFIX + "claims"
#: The scheduling gate that holds a Pod until all its claims are allocated.
SCHEDULING_GATE = PREFIX + "allocation"
#: The label the operator's Pod watch selects on (server-side), set on Pods and Pod templates.
MANAGED_LABEL = PREFIX + "managed"
MANAGED_VALUE = "true"
#: Prefix of the per-(claim, requests) device list annotations read by DRA_<CLAIM>_DEVICES.
DEVICES_ANNOTATION_PREFIX = PREFIX + "devices."
#: Prefix of the per-container NVML GPU UUID annotations read by NVIDIA_VISIBLE_DEVICES.
NVIDIA_ANNOTATION_PREFIX = PREFIX + "nvidia."
#: On generated ResourceClaims: the Pod's name for the claim (like resource.kubernetes.io/pod-claim-name).
POD_CLAIM_NAME_ANNOTATION = PREFIX + "pod-claim-name"
#: The Pod claim name of the claim generated for a Pod's extended-resource requests (`nvidia.com/gpu: 2`
#: where a DeviceClass declares `extendedResourceName: nvidia.com/gpu`); reserved: a Pod may not use it.
EXTENDED_RESOURCE_CLAIM = "extended-resources"
#: Finalizer on allocated and reserved claims.
CLAIM_FINALIZER = PREFIX + "delete-protection"

#: The extended resource each container that uses claims asks for when devices are delivered by the node's
#: device plugin (the agent): the kubelet then calls the plugin's Allocate for that container. One unit per
#: container, whatever its devices: the plugin advertises slots, not devices, so shared claims are never
#: blocked by the kubelet's accounting.
DEVICE_PLUGIN_RESOURCE = PREFIX + "devices"
#: On a Pod the operator ungated: the node its claims were allocated on, and when it was ungated (RFC 3339);
#: a node's device plugin serves one such Pod at a time (see dra_operator.agent.delivery).
NODE_ANNOTATION = PREFIX + "node"
UNGATED_AT_ANNOTATION = PREFIX + "ungated-at"

NVIDIA_ENV = "NVIDIA_VISIBLE_DEVICES"
#: What NVIDIA_VISIBLE_DEVICES holds for a container whose claims hold no NVML GPU: the runtime exposes none
#: (an unset or empty value lets images such as CUDA's default to "all").
NVIDIA_NONE = "void"

_NAME_LIMIT = 63  # the name part of a qualified annotation key
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")


def env_name(claim: str) -> str:
    """`DRA_<CLAIM>_DEVICES`: the Pod's claim name upper-cased, every non-alphanumeric character as `_`."""
    return "DRA_" + _NOT_ALNUM.sub("_", claim).upper() + "_DEVICES"


def _key(prefix: str, name: str) -> str:
    """`prefix + name`, with the name part shortened by a hash when it would exceed 63 characters."""
    local_prefix = prefix[len(PREFIX) :]
    budget = _NAME_LIMIT - len(local_prefix)
    if len(name) > budget:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        name = name[: budget - len(digest) - 1].rstrip("-.") + "-" + digest
    return prefix + name


def devices_annotation(claim: str, requests: list[str] | None) -> str:
    """Annotation holding the devices of one Pod claim (all of it, or only some of its requests)."""
    name = claim if not requests else claim + "." + ".".join(sorted(set(requests)))
    return _key(DEVICES_ANNOTATION_PREFIX, name)


def nvidia_annotation(container: str) -> str:
    """Annotation holding the NVML GPU UUIDs of every claim one container uses."""
    return _key(NVIDIA_ANNOTATION_PREFIX, container)
