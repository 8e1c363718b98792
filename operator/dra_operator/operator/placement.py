"""Pure helpers for one Pod: generated claims, node constraints, device annotations and the Pod patch."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from dra_operator.admission import names
from dra_operator.admission.mutation import read_manifest
from dra_operator.allocation.nodes import Node, selector_matches
from dra_operator.api.resource import API_VERSION, NodeSelector

Json = dict[str, Any]

#: Kubernetes keeps generated claim names within 63 characters: 57 for `<pod>-<claim>`, `-`, 5 random ones.
_GENERATE_NAME_BASE_MAX = 57


def generate_name(pod_name: str, claim_name: str) -> str:
    """`<pod>-<claim>-`, both parts truncated in proportion to their length when too long (as Kubernetes)."""
    base = f"{pod_name}-{claim_name}-"
    if len(base) <= _GENERATE_NAME_BASE_MAX:
        return base
    total = len(base)
    pod_part = pod_name[: len(pod_name) * _GENERATE_NAME_BASE_MAX // total]
    claim_part = claim_name[: len(claim_name) * _GENERATE_NAME_BASE_MAX // total]
    return f"{pod_part}-{claim_part}"  # as Kubernetes: no trailing `-` once truncated


def generated_claim(pod: Mapping[str, Any], pod_claim: str, template: Mapping[str, Any]) -> Json:
    """The ResourceClaim a template yields for one Pod: owned by the Pod, annotated with the Pod's claim name.

    It is born with our finalizer: it will be allocated and reserved for its Pod, and adding it later would
    cost one more write per Pod.
    """
    meta = pod["metadata"]
    tmeta = template.get("spec", {}).get("metadata") or {}
    annotations = dict(tmeta.get("annotations") or {})
    annotations[names.POD_CLAIM_NAME_ANNOTATION] = pod_claim
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourceClaim",
        "metadata": {
            "generateName": generate_name(meta["name"], pod_claim),
            "namespace": meta["namespace"],
            "labels": dict(tmeta.get("labels") or {}),
            "annotations": annotations,
            "finalizers": [names.CLAIM_FINALIZER],
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": copy.deepcopy(template.get("spec", {}).get("spec") or {}),
    }


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def is_generated_for(claim: Mapping[str, Any], pod_uid: str, pod_claim: str | None = None) -> bool:
    """Whether `claim` was generated for this Pod (and this Pod claim name, when given)."""
    if controller_uid(claim) != pod_uid:
        return False
    annotations = claim.get("metadata", {}).get("annotations") or {}
    name = annotations.get(names.POD_CLAIM_NAME_ANNOTATION)
    return name is not None and (pod_claim is None or name == pod_claim)


def reserved_uids(claim: Mapping[str, Any]) -> list[str]:
    return [str(r.get("uid")) for r in (claim.get("status") or {}).get("reservedFor") or []]


def claim_state(claim: Mapping[str, Any]) -> str:
    """The STATE printer column, as `kubectl get resourceclaims` shows it for built-in claims."""
    status = claim.get("status") or {}
    parts = []
    if claim.get("metadata", {}).get("deletionTimestamp"):
        parts.append("deleted")
    if status.get("allocation"):
        parts.append("allocated")
        if status.get("reservedFor"):
            parts.append("reserved")
    elif not parts:
        parts.append("pending")
    return ",".join(parts)


# ------------------------------------------------------------------------------------------- node affinity


def pod_fits_node(pod: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """The Pod's own node constraints: nodeName, nodeSelector, required node affinity; not unschedulable."""
    spec = pod.get("spec") or {}
    if node.get("spec", {}).get("unschedulable"):
        return False
    name = node.get("metadata", {}).get("name")
    if spec.get("nodeName") and spec["nodeName"] != name:
        return False
    labels = node.get("metadata", {}).get("labels") or {}
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = (
        (spec.get("affinity") or {})
        .get("nodeAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution")
    )
    if not (required or {}).get("nodeSelectorTerms"):
        return True
    try:
        selector = NodeSelector.model_validate(required)
        return selector_matches(selector, Node.from_object(node))
    except (ValidationError, ValueError):
        return False  # the API server validated the Pod; a selector we cannot read matches nothing


def pinned_affinity(spec: Mapping[str, Any], node: str) -> Json:
    """The Pod's affinity with the required node affinity narrowed to `node`.

    On a gated Pod Kubernetes only lets the required terms narrow: with terms present, the requirement is
    added to every term (they are ORed, so each must also name the node); without, one term is created.
    """
    affinity: Json = copy.deepcopy(dict(spec.get("affinity") or {}))
    node_affinity = affinity.setdefault("nodeAffinity", {})
    required = node_affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.get("nodeSelectorTerms") or []
    requirement = {"key": "metadata.name", "operator": "In", "values": [node]}
    if not terms:
        terms = [{"matchFields": [requirement]}]
    else:
        for term in terms:
            fields = term.setdefault("matchFields", [])
            if requirement not in fields:
                fields.append(requirement)
    required["nodeSelectorTerms"] = terms
    return affinity


# ------------------------------------------------------------------------------------ device annotations


def _result_in(result: Mapping[str, Any], requests: list[str] | None) -> bool:
    if requests is None:
        return True
    request = str(result.get("request", ""))
    # A container naming a firstAvailable request sees whichever subrequest (`req/sub`) was chosen.
    return any(request == r or request.startswith(r + "/") for r in requests)


def device_annotations(
    pod: Mapping[str, Any],
    allocations: Mapping[str, Mapping[str, Any]],
    gpu_uuid: Mapping[tuple[str, str, str], str],
) -> dict[str, str]:
    """The values of the Pod's device annotations once its claims are allocated.

    `allocations` maps the Pod's claim name to the claim's `status.allocation`; `gpu_uuid` maps
    (driver, pool, device) of NVML GPUs to their UUID.
    """
    manifest = read_manifest(pod.get("metadata", {}).get("annotations"))
    values: dict[str, str] = {}
    for key, spec in manifest["devices"].items():
        picked: list[tuple[str, str, str]] = []
        for ref in spec.get("claims") or []:
            allocation = allocations.get(ref.get("name")) or {}
            for result in (allocation.get("devices") or {}).get("results") or []:
                if _result_in(result, ref.get("requests")):
                    picked.append((str(result["driver"]), str(result["pool"]), str(result["device"])))
        if spec.get("format") == "nvidia":
            uuids = list(dict.fromkeys(gpu_uuid[d] for d in picked if d in gpu_uuid))
            values[key] = ",".join(uuids) if uuids else names.NVIDIA_NONE
        else:
            values[key] = ",".join(dict.fromkeys("/".join(d) for d in picked))
    return values


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def pod_patch(pod: Mapping[str, Any], node: str | None, annotations: Mapping[str, str]) -> list[Json]:
    """One JSON patch: node affinity pinned to `node`, device annotations set, our scheduling gate removed.

    The `test` op makes it a no-op failure if someone else already removed the gate (we never ungate twice).
    """
    spec = pod.get("spec") or {}
    gates = list(spec.get("schedulingGates") or [])
    ops: list[Json] = [{"op": "test", "path": "/spec/schedulingGates", "value": gates}]
    rest = [g for g in gates if g.get("name") != names.SCHEDULING_GATE]
    ops.append(
        {"op": "replace", "path": "/spec/schedulingGates", "value": rest}
        if rest
        else {"op": "remove", "path": "/spec/schedulingGates"}
    )
    if node:
        ops.append({"op": "add", "path": "/spec/affinity", "value": pinned_affinity(spec, node)})
    if not (pod.get("metadata") or {}).get("annotations"):
        ops.append({"op": "add", "path": "/metadata/annotations", "value": dict(annotations)})
    else:
        for key, value in annotations.items():
            ops.append({"op": "add", "path": f"/metadata/annotations/{_pointer(key)}", "value": value})
    return ops


def pod_claim_refs(pod: Mapping[str, Any]) -> list[Json]:
    """The claim references the webhook moved into the Pod's manifest annotation."""
    manifest = read_manifest(pod.get("metadata", {}).get("annotations"))
    return [dict(r) for r in manifest["resourceClaims"] if isinstance(r, dict) and r.get("name")]


def extended_claim_spec(ref: Mapping[str, Any]) -> Json | None:
    """The spec of the claim generated for a Pod's extended-resource requests, from its manifest entry: only
    ExactCount requests of a class and a count are taken over (the manifest is an annotation, and the claim
    is created by the operator, so nothing else a hand-written annotation might carry, such as adminAccess,
    may reach it); None when the entry has no such request."""
    raw = ref.get("claimSpec")
    requests = ((raw.get("devices") or {}).get("requests") if isinstance(raw, dict) else None) or []
    kept = []
    for request in requests if isinstance(requests, list) else []:
        exactly = request.get("exactly") if isinstance(request, dict) else None
        if not isinstance(exactly, dict):
            continue
        name, klass, count = request.get("name"), exactly.get("deviceClassName"), exactly.get("count")
        if isinstance(name, str) and isinstance(klass, str) and isinstance(count, int) and count > 0:
            kept.append({"name": name, "exactly": {"deviceClassName": klass, "count": count}})
    return {"devices": {"requests": kept}} if kept else None


def is_gated(pod: Mapping[str, Any]) -> bool:
    gates: Iterable[Any] = (pod.get("spec") or {}).get("schedulingGates") or []
    return any(isinstance(g, dict) and g.get("name") == names.SCHEDULING_GATE for g in gates)


def is_done(pod: Mapping[str, Any]) -> bool:
    """Succeeded or Failed: its claims are released (a terminating Pod still running keeps them)."""
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def is_deleting(obj: Mapping[str, Any]) -> bool:
    """Marked for deletion (a deletionTimestamp), whether or not finalizers still hold it."""
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
