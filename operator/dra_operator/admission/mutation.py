"""The admission mutation as a pure function: move our claim references off a Pod or a Pod template.

Given a Pod, or a Job / CronJob / Deployment / StatefulSet / DaemonSet / ReplicaSet whose Pod template carries
`spec.resourceClaims`, `mutate` returns a changed deep copy where:

- the claim references that belong to this operator are removed from `spec.resourceClaims` and from every
  container's (and init container's) `resources.claims`, and recorded in the annotation
  `resource.dra-operator.io/claims` (a JSON manifest, see `read_manifest`), so neither a cluster without DRA
  (which drops those fields) nor a cluster with built-in DRA (whose scheduler would wait for claims it cannot
  see) acts on them;
- the scheduling gate `resource.dra-operator.io/allocation` holds the Pod until the operator has allocated
  its claims (templates get it too, so their Pods are born gated; never on a Pod whose nodeName is already
  set, which the API server forbids);
- the label `resource.dra-operator.io/managed=true` lets the operator watch only such Pods;
- every container that uses one of the moved claims gets env vars read through the downward API from
  annotations the operator writes at allocation time: `DRA_<CLAIM>_DEVICES` (one per claim it uses:
  comma-separated `<driver>/<pool>/<device>`) and `NVIDIA_VISIBLE_DEVICES` (the UUIDs of the NVML GPUs of all
  its claims, `void` when none). Keys are per claim (and requests) and per container, so a container only sees
  its own claims' devices.

Which references are ours is decided by the caller (the `ours` predicate), because it needs the cluster:
see dra_operator.admission.ownership for the rule.

Extended resources (`extended`: resource name -> DeviceClass that declares it as its `extendedResourceName`):
a container asking for `nvidia.com/gpu: 2` (limits, or requests) of a declared name loses that request and
uses instead one request of a claim generated for the Pod, `extended-resources` (EXTENDED_RESOURCE_CLAIM),
whose spec the manifest carries (`claimSpec`: one ExactCount request per container and resource, named
`container-<i>-request-<j>`, <i> counting init containers first). From there it is a claim like any other:
allocated with the Pod's other claims on one node, the container sees exactly its request's devices. Names no
class declares are left alone, and so is the node's allocatable: the request no longer reaches kube-scheduler.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dra_operator.admission import names
from dra_operator.api.gang import gang_problem
from dra_operator.api.pod import flat_claim_reference, pod_claim_problems

#: Where each supported kind keeps its Pod template (an empty path: the object is the Pod itself).
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
}

Reference = dict[str, Any]
Ours = Callable[[Reference], bool]


@dataclass(frozen=True)
class ExtendedRequest:
    """One container's request for an extended resource that a DeviceClass declares."""

    list_key: str  # "initContainers" or "containers"
    container_index: int
    container: str
    resource: str
    count: int
    request: str  # the request's name in the generated claim


class AdmissionRejected(ValueError):
    """The object is invalid in a way the API server would reject too; the message is shown to the user."""


@dataclass(frozen=True)
class Mutation:
    """The result of `mutate`: the new object and what was moved."""

    obj: dict[str, Any]
    moved: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    @property
    def changed(self) -> bool:
        return bool(self.moved)


def template_of(obj: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    """The Pod (template) inside `obj` of this kind; None for an unsupported kind or a missing path."""
    if kind not in TEMPLATE_PATHS:
        return None
    node: Any = obj
    for key in TEMPLATE_PATHS[kind]:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, dict) else None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def claim_references(obj: Mapping[str, Any], kind: str) -> list[Reference]:
    """The Pod (template)'s `spec.resourceClaims`, after the whole core/v1 claim validation.

    Runs before anything is moved: once the references are off the Pod the apiserver can no longer check
    them, so every rule it would apply (see dra_operator.api.pod.pod_claim_problems) is applied here, with its
    field paths and messages. Raises AdmissionRejected listing every problem. References come back in the flat
    form (a Kubernetes 1.30 `source:` is lifted), which is what the manifest annotation records.
    """
    template = template_of(obj, kind)
    if template is None:
        return []
    spec = template.get("spec")
    refs = _as_list(spec.get("resourceClaims")) if isinstance(spec, Mapping) else []
    problems = pod_claim_problems({"spec": spec}) if isinstance(spec, dict) else []
    if problems:
        prefix = "".join(key + "." for key in TEMPLATE_PATHS[kind])
        raise AdmissionRejected(invalid_message(kind, obj, [(prefix + path, msg) for path, msg in problems]))
    return [dict(flat_claim_reference(ref)) for ref in refs]


def declared_extended_resources(classes: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Extended resource name -> the DeviceClass that declares it (`spec.extendedResourceName`). Where two
    classes declare one name, the first by class name wins, so every replica decides alike."""
    declared: dict[str, str] = {}
    for klass in sorted(classes, key=lambda c: str((c.get("metadata") or {}).get("name") or "")):
        spec = klass.get("spec")
        name = spec.get("extendedResourceName") if isinstance(spec, Mapping) else None
        if isinstance(name, str) and name:
            declared.setdefault(name, str(klass["metadata"]["name"]))
    return declared


def asks_for_extended_resources(obj: Mapping[str, Any], kind: str) -> bool:
    """Whether a container of the Pod (template) asks for any extended resource (a domain-prefixed name):
    the cheap test before the classes are consulted."""
    template = template_of(obj, kind)
    spec = template.get("spec") if template is not None else None
    if not isinstance(spec, Mapping):
        return False
    for list_key in ("initContainers", "containers"):
        for container in _as_list(spec.get(list_key)):
            resources = container.get("resources") if isinstance(container, Mapping) else None
            if isinstance(resources, Mapping) and any(
                "/" in str(name)
                for section in ("limits", "requests")
                for name in _as_mapping(resources.get(section))
            ):
                return True
    return False


def _as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _whole_number(value: Any) -> int | None:
    text = str(value).strip()
    return int(text) if text.isdigit() else None


def extended_requests(spec: Mapping[str, Any], extended: Mapping[str, str]) -> list[ExtendedRequest]:
    """The containers' requests (or limits) for extended resources named in `extended`, in container order.
    Raises AdmissionRejected for a count that is not a whole number, or requests and limits that differ (the
    apiserver requires them equal for extended resources)."""
    found: list[ExtendedRequest] = []
    position = 0
    problems: list[tuple[str, str]] = []
    for list_key in ("initContainers", "containers"):
        for index, container in enumerate(_as_list(spec.get(list_key))):
            if not isinstance(container, dict):
                continue
            resources = container.get("resources")
            sections: Mapping[str, Any] = resources if isinstance(resources, Mapping) else {}
            limits: Mapping[str, Any] = _as_mapping(sections.get("limits"))
            requests: Mapping[str, Any] = _as_mapping(sections.get("requests"))
            wanted = [name for name in extended if name in limits or name in requests]
            for j, name in enumerate(sorted(wanted)):
                path = f"spec.{list_key}[{index}].resources"
                raw = limits.get(name, requests.get(name))
                if name in limits and name in requests and str(limits[name]) != str(requests[name]):
                    problems.append((f"{path}.requests[{name}]", f"must be equal to {name} limit"))
                    continue
                count = _whole_number(raw)
                if count is None or count < 1:
                    problems.append(
                        (
                            f"{path}.limits[{name}]",
                            f"Invalid value: {json.dumps(str(raw))}: must be a whole number",
                        )
                    )
                    continue
                request = f"container-{position}-request-{j}"
                found.append(
                    ExtendedRequest(list_key, index, str(container.get("name", "")), name, count, request)
                )
            position += 1
    if problems:
        raise AdmissionRejected("; ".join(f"{path}: {message}" for path, message in problems))
    return found


def _extended_claim(found: list[ExtendedRequest], extended: Mapping[str, str]) -> Reference:
    """The manifest entry of the claim generated for the Pod's extended-resource requests."""
    return {
        "name": names.EXTENDED_RESOURCE_CLAIM,
        "claimSpec": {
            "devices": {
                "requests": [
                    {
                        "name": r.request,
                        "exactly": {"deviceClassName": extended[r.resource], "count": r.count},
                    }
                    for r in found
                ]
            }
        },
        "extendedResources": {r.request: r.resource for r in found},
    }


def _use_claim_instead(spec: dict[str, Any], found: list[ExtendedRequest]) -> None:
    """Each container's extended-resource request becomes a reference to its request of the generated
    claim."""
    for r in found:
        container = spec[r.list_key][r.container_index]
        resources = container["resources"]
        for section in ("limits", "requests"):
            values = resources.get(section)
            if isinstance(values, dict):
                values.pop(r.resource, None)
                if not values:
                    resources.pop(section)
        claims = resources.get("claims")
        resources["claims"] = [
            *(_as_list(claims)),
            {"name": names.EXTENDED_RESOURCE_CLAIM, "request": r.request},
        ]


def invalid_message(kind: str, obj: Mapping[str, Any], problems: list[tuple[str, str]]) -> str:
    """The apiserver's StatusError text: `Kind "name" is invalid: path: detail` (several in brackets)."""
    metadata = obj.get("metadata")
    name = ""
    if isinstance(metadata, Mapping):
        name = str(metadata.get("name") or metadata.get("generateName") or "")
    errors = [f"{path}: {message}" if path else message for path, message in problems]
    listed = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
    return f"{kind} {json.dumps(name)} is invalid: {listed}"


def read_manifest(annotations: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ClaimsManifest stored on a Pod (template), or an empty one.

    Shape (JSON): {"resourceClaims": [pod claim refs], "containers": {name: [{"name", "request"?}]},
    "initContainers": {...}, "devices": {annotation key: {"format": "devices"|"nvidia",
    "claims": [{"name": claim, "requests": [..] | null}]}}}
    """
    raw = (annotations or {}).get(names.CLAIMS_ANNOTATION)
    try:
        manifest = json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        manifest = {}
    if not isinstance(manifest, dict):
        manifest = {}
    # Anyone can write the annotation (or copy it from elsewhere): parts of the wrong shape are dropped.
    refs = _as_list(manifest.get("resourceClaims"))
    manifest["resourceClaims"] = [r for r in refs if isinstance(r, dict) and isinstance(r.get("name"), str)]
    for list_key in ("containers", "initContainers"):
        containers = manifest.get(list_key)
        manifest[list_key] = {
            str(name): [r for r in entries if isinstance(r, dict) and isinstance(r.get("name"), str)]
            for name, entries in (containers.items() if isinstance(containers, dict) else ())
            if isinstance(entries, list)
        }
    devices = manifest.get("devices")
    manifest["devices"] = {
        str(key): {**spec, "claims": [c for c in spec["claims"] if isinstance(c, dict)]}
        for key, spec in (devices.items() if isinstance(devices, dict) else ())
        if isinstance(spec, dict) and isinstance(spec.get("claims"), list)
    }
    return manifest


def _claim_requests(refs: list[Reference]) -> dict[str, list[str] | None]:
    """Group a container's claim references by claim: None = the whole claim, else the requests it names."""
    grouped: dict[str, list[str] | None] = {}
    for ref in refs:
        claim, request = ref["name"], ref.get("request")
        if claim in grouped and grouped[claim] is None:
            continue
        if not request:
            grouped[claim] = None
        else:
            grouped.setdefault(claim, [])
            requests = grouped[claim]
            if requests is not None and request not in requests:
                requests.append(request)
    return grouped


def _set_env(container: dict[str, Any], env: list[dict[str, Any]]) -> None:
    ours = {item["name"] for item in env}
    kept = [
        item
        for item in _as_list(container.get("env"))
        if not (isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"] in ours)
    ]
    container["env"] = kept + env


def _field_ref(annotation: str) -> dict[str, Any]:
    return {"fieldRef": {"apiVersion": "v1", "fieldPath": f"metadata.annotations['{annotation}']"}}


def _ask_for_delivery(container: dict[str, Any], resource: str) -> None:
    """One unit of the device plugin's extended resource in the container's limits (requests follow limits
    for extended resources): the kubelet then asks the plugin to deliver this container's devices."""
    resources = container.setdefault("resources", {})
    if not isinstance(resources, dict):
        resources = container["resources"] = {}
    for section in ("limits", "requests"):
        values = resources.get(section)
        if section == "requests" and not isinstance(values, dict):
            continue  # requests default to limits
        if not isinstance(values, dict):
            values = resources[section] = {}
        values[resource] = "1"


def mutate(
    obj: Mapping[str, Any],
    kind: str,
    ours: Ours = lambda ref: True,
    delivery_resource: str | None = None,
    extended: Mapping[str, str] | None = None,
) -> Mutation:
    """Move this operator's claim references off the Pod (template) in `obj`; see the module docstring.

    With `delivery_resource` (the node device plugin's extended resource), every container that uses a moved
    claim also asks for one unit of it, so its node's kubelet has the plugin deliver its devices. `extended`
    maps the extended resource names DeviceClasses declare to those classes.

    Raises AdmissionRejected for claim references the apiserver would reject (see `claim_references`).
    Returns the unchanged copy (`changed` False) when no reference is ours and no declared extended resource
    is asked for.
    """
    new: dict[str, Any] = copy.deepcopy(dict(obj))
    refs = claim_references(new, kind)
    template = template_of(new, kind)
    spec_found = template.get("spec") if template is not None else None
    found = extended_requests(spec_found, extended) if extended and isinstance(spec_found, dict) else []
    if template is None or not (refs or found):
        return Mutation(obj=new)
    moved = [ref for ref in refs if ours(ref)]
    kept = [ref for ref in refs if not ours(ref)]
    if found:
        if any(ref["name"] == names.EXTENDED_RESOURCE_CLAIM for ref in refs):
            asked = ", ".join(sorted({r.resource for r in found}))
            raise AdmissionRejected(
                f"{kind} {json.dumps(str((new.get('metadata') or {}).get('name') or ''))} is invalid: "
                f'the pod claim name "{names.EXTENDED_RESOURCE_CLAIM}" is reserved for the claim '
                f"dra-operator generates for extended resources ({asked})"
            )
        _use_claim_instead(template["spec"], found)
        moved.append(_extended_claim(found, extended or {}))
    if not moved:
        return Mutation(obj=new, kept=tuple(ref["name"] for ref in kept))
    problem = gang_problem(_as_mapping(template.get("metadata")), template=kind != "Pod")
    if problem is not None:
        raise AdmissionRejected(invalid_message(kind, new, [("", problem)]))
    moved_names = {ref["name"] for ref in moved}

    spec: dict[str, Any] = template["spec"]
    if kept:
        # Entries left to built-in DRA stay exactly as written (their form is the API server's).
        spec["resourceClaims"] = [
            ref
            for ref in spec["resourceClaims"]
            if isinstance(ref, dict) and ref.get("name") not in moved_names
        ]
    else:
        spec.pop("resourceClaims", None)

    metadata: dict[str, Any] = template.setdefault("metadata", {})
    if not isinstance(metadata, dict):
        metadata = template["metadata"] = {}
    annotations = metadata.get("annotations")
    if not isinstance(annotations, dict):
        annotations = metadata["annotations"] = {}
    manifest = read_manifest(annotations)
    by_name = {ref["name"]: ref for ref in manifest["resourceClaims"]}
    by_name.update({ref["name"]: ref for ref in moved})
    manifest["resourceClaims"] = list(by_name.values())

    for list_key in ("initContainers", "containers"):
        for container in _as_list(spec.get(list_key)):
            if not isinstance(container, dict):
                continue
            resources = container.get("resources")
            container_refs = _as_list(resources.get("claims")) if isinstance(resources, dict) else []
            mine = [r for r in container_refs if isinstance(r, dict) and r.get("name") in moved_names]
            if not mine or not isinstance(resources, dict):
                continue
            rest = [r for r in container_refs if r not in mine]
            if rest:
                resources["claims"] = rest
            else:
                resources.pop("claims", None)
            cname = str(container.get("name", ""))
            recorded = manifest[list_key].setdefault(cname, [])
            recorded.extend(dict(r) for r in mine if r not in recorded)
            grouped = _claim_requests(recorded)
            env: list[dict[str, Any]] = []
            for claim, requests in grouped.items():
                key = names.devices_annotation(claim, requests)
                manifest["devices"][key] = {
                    "format": "devices",
                    "claims": [{"name": claim, "requests": requests}],
                }
                env.append({"name": names.env_name(claim), "valueFrom": _field_ref(key)})
            nvidia_key = names.nvidia_annotation(cname)
            manifest["devices"][nvidia_key] = {
                "format": "nvidia",
                "claims": [{"name": c, "requests": r} for c, r in grouped.items()],
            }
            env.append({"name": names.NVIDIA_ENV, "valueFrom": _field_ref(nvidia_key)})
            _set_env(container, env)
            if delivery_resource:
                _ask_for_delivery(container, delivery_resource)

    # Whether the Pod was born gated: the operator tells "ungated by hand" from "bound at creation" by it.
    manifest["gated"] = not spec.get("nodeName")
    annotations[names.CLAIMS_ANNOTATION] = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    labels = metadata.get("labels")
    if not isinstance(labels, dict):
        labels = metadata["labels"] = {}
    labels[names.MANAGED_LABEL] = names.MANAGED_VALUE
    if not spec.get("nodeName"):
        gates = _as_list(spec.get("schedulingGates"))
        if not any(isinstance(g, dict) and g.get("name") == names.SCHEDULING_GATE for g in gates):
            spec["schedulingGates"] = [*gates, {"name": names.SCHEDULING_GATE}]
    return Mutation(
        obj=new,
        moved=tuple(ref["name"] for ref in moved),
        kept=tuple(ref["name"] for ref in kept),
    )
