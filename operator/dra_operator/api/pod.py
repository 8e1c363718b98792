"""Pod-side claim references: `spec.resourceClaims` and `containers[].resources.claims` in plain dicts.

Works on a Pod, a bare PodSpec, a PodTemplateSpec or a workload with a Pod template (Job, CronJob,
Deployment ...), so the webhook and `simulate` read claims the same way. Validation follows core/v1 Pod
validation, with the apiserver's own messages where users will compare them.

Both Pod API forms of a claim reference are read: Kubernetes 1.31 and newer name the claim or template in the
entry itself (`resourceClaimName` / `resourceClaimTemplateName`); 1.30 nests them under `source:`. An entry in
the 1.30 form is read as the flat one (`flat_claim_reference`); everything downstream sees only the flat form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from dra_operator.api.formats import DNSLabel, DNSSubdomain
from dra_operator.api.meta import dns_label_messages, dns_subdomain_messages, invalid_value
from dra_operator.api.problems import InvalidObject, problems_of

__all__ = [
    "AT_MOST_ONE_MESSAGE",
    "ONE_OF_MESSAGE",
    "ContainerClaim",
    "InvalidObject",
    "PodResourceClaim",
    "check_pod_claims",
    "claims_used_by_container",
    "container_claims",
    "flat_claim_reference",
    "pod_claim_problems",
    "pod_resource_claims",
    "pod_spec_of",
    "template_path",
]

ONE_OF_MESSAGE = "must specify one of: `resourceClaimName`, `resourceClaimTemplateName`"
AT_MOST_ONE_MESSAGE = "at most one of `resourceClaimName` or `resourceClaimTemplateName` may be specified"

ContainerKind = Literal["initContainers", "containers"]
CONTAINER_KINDS: tuple[ContainerKind, ...] = ("initContainers", "containers")


class PodResourceClaim(BaseModel):
    """One entry of `spec.resourceClaims`: a name for the Pod, and the claim or the template it comes from."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    name: DNSLabel
    resource_claim_name: DNSSubdomain | None = None
    resource_claim_template_name: DNSSubdomain | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> PodResourceClaim:
        if self.resource_claim_name and self.resource_claim_template_name:
            raise ValueError(AT_MOST_ONE_MESSAGE)
        if not self.resource_claim_name and not self.resource_claim_template_name:
            raise ValueError(ONE_OF_MESSAGE)
        return self

    @property
    def from_template(self) -> bool:
        return self.resource_claim_template_name is not None


@dataclass(frozen=True)
class ContainerClaim:
    """One `resources.claims` entry of one container: the Pod claim `name`, optionally one of its requests."""

    container: str
    container_kind: ContainerKind
    index: int  # position in the container's `resources.claims`, for field paths
    container_index: int
    name: str
    request: str | None = None

    @property
    def path(self) -> str:
        return f"spec.{self.container_kind}[{self.container_index}].resources.claims[{self.index}]"


# ------------------------------------------------------------------------------------------ locating


_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "PodTemplate": ("template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
}


def template_path(obj: dict[str, Any]) -> tuple[str, ...]:
    """The keys leading from `obj` to its PodSpec: () when `obj` is itself a PodSpec."""
    kind = obj.get("kind")
    if isinstance(kind, str) and kind in _TEMPLATE_PATHS:
        return _TEMPLATE_PATHS[kind]
    if "containers" in obj or "resourceClaims" in obj:
        return ()
    if isinstance(obj.get("spec"), dict):  # a PodTemplateSpec: {metadata, spec}
        return ("spec",)
    return ()


def pod_spec_of(obj: dict[str, Any]) -> dict[str, Any]:
    """The PodSpec in a Pod, PodTemplateSpec or workload, or `obj` if it is a PodSpec ({} if absent)."""
    node: Any = obj
    for key in template_path(obj):
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


# -------------------------------------------------------------------------------------------- reading


_FLAT_FIELDS = ("resourceClaimName", "resourceClaimTemplateName")


def flat_claim_reference(raw: Any) -> Any:
    """A `spec.resourceClaims` entry in the flat form of Kubernetes 1.31+: 1.30's
    `{name, source: {resourceClaimName | resourceClaimTemplateName}}` becomes
    `{name, resourceClaimName | resourceClaimTemplateName}`. Anything else is returned as it is
    (`_source_problems` reports a malformed or mixed `source`)."""
    if not isinstance(raw, dict) or "source" not in raw:
        return raw
    source = raw["source"]
    flat = {key: value for key, value in raw.items() if key != "source"}
    if isinstance(source, dict) and not any(key in raw for key in _FLAT_FIELDS):
        flat.update({key: source[key] for key in _FLAT_FIELDS if key in source})
    return flat


def _source_problems(raw: Any, base: str) -> list[tuple[str, str]]:
    """What is wrong with a 1.30-form `source` (as 1.30's apiserver words it), or with mixing both forms."""
    if not isinstance(raw, dict) or "source" not in raw:
        return []
    source = raw["source"]
    if not isinstance(source, dict):
        return [(f"{base}.source", "must be an object")]
    problems = [(f"{base}.source.{key}", "unknown field") for key in source if key not in _FLAT_FIELDS]
    mixed = [key for key in _FLAT_FIELDS if key in raw]
    if mixed:
        problems.append(
            (
                f"{base}.source",
                f"may not be used together with `{mixed[0]}`: `source` is the Kubernetes 1.30 form, "
                "the flat fields are the form of 1.31 and newer",
            )
        )
    return problems


def _raw_pod_claims(spec: dict[str, Any]) -> list[Any]:
    claims = spec.get("resourceClaims")
    return [flat_claim_reference(raw) for raw in claims] if isinstance(claims, list) else []


def pod_resource_claims(obj: dict[str, Any], *, source: str | None = None) -> list[PodResourceClaim]:
    """`spec.resourceClaims` as models; raises InvalidObject naming the bad entries (and `source`)."""
    problems: list[tuple[str, str]] = []
    result: list[PodResourceClaim] = []
    for index, raw in enumerate(_raw_pod_claims(pod_spec_of(obj))):
        try:
            result.append(PodResourceClaim.model_validate(raw))
        except ValidationError as err:
            for path, message in problems_of(err):
                problems.append((_join(f"spec.resourceClaims[{index}]", path), message))
    if problems:
        raise InvalidObject(problems, kind=_kind(obj), name=_name(obj), source=source)
    return result


def container_claims(obj: dict[str, Any]) -> list[ContainerClaim]:
    """Every `resources.claims` entry of init containers and containers, in that order (unvalidated)."""
    spec = pod_spec_of(obj)
    result: list[ContainerClaim] = []
    for container_kind in CONTAINER_KINDS:
        containers = spec.get(container_kind)
        if not isinstance(containers, list):
            continue
        for container_index, container in enumerate(containers):
            if not isinstance(container, dict):
                continue
            resources = container.get("resources")
            claims = resources.get("claims") if isinstance(resources, dict) else None
            if not isinstance(claims, list):
                continue
            for index, claim in enumerate(claims):
                if not isinstance(claim, dict):
                    continue
                request = claim.get("request")
                result.append(
                    ContainerClaim(
                        container=str(container.get("name", "")),
                        container_kind=container_kind,
                        index=index,
                        container_index=container_index,
                        name=str(claim.get("name") or ""),
                        request=str(request) if request else None,
                    )
                )
    return result


def claims_used_by_container(obj: dict[str, Any], container: str) -> list[ContainerClaim]:
    """The claim references of the (init) container named `container`."""
    return [ref for ref in container_claims(obj) if ref.container == container]


# ------------------------------------------------------------------------------------------ validating


def _pod_claim_entry_problems(raw: Any, base: str, pod_names: set[str]) -> list[tuple[str, str]]:
    """One `spec.resourceClaims` entry, checked in the apiserver's order and words; records its name."""
    if not isinstance(raw, dict):
        return [(base, "must be an object")]
    problems: list[tuple[str, str]] = [
        (f"{base}.{key}", "unknown field") for key in raw if key not in _POD_CLAIM_FIELDS
    ]
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        problems.append((f"{base}.name", "Required value"))
    elif name in pod_names:
        problems.append((f"{base}.name", f"Duplicate value: {_q(name)}"))
    else:
        problems += [(f"{base}.name", invalid_value(name, m)) for m in dns_label_messages(name)]
    if isinstance(name, str) and name:
        pod_names.add(name)
    claim, template = raw.get("resourceClaimName"), raw.get("resourceClaimTemplateName")
    if claim and template:
        problems.append((base, AT_MOST_ONE_MESSAGE))
    elif not claim and not template:
        problems.append((base, ONE_OF_MESSAGE))
    for key, value in (("resourceClaimName", claim), ("resourceClaimTemplateName", template)):
        if value:
            text = str(value)
            problems += [(f"{base}.{key}", invalid_value(text, m)) for m in dns_subdomain_messages(text)]
    return problems


_POD_CLAIM_FIELDS = frozenset({"name", "resourceClaimName", "resourceClaimTemplateName"})


def pod_claim_problems(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """All problems with the claim references of a Pod or template, as (field path, message); [] when valid.

    Paths and messages are the apiserver's (checked against kube-apiserver 1.36), with a short explanation
    added where Kubernetes only says "Duplicate value".

    Rules (core/v1 Pod validation): pod claim names are unique DNS labels with exactly one source, which is a
    DNS subdomain; a container claim names a pod claim, its `request` is a DNS label, and a container lists
    neither the same name/request twice nor a whole claim together with one of that claim's requests.
    """
    spec = pod_spec_of(obj)
    problems: list[tuple[str, str]] = []
    pod_names: set[str] = set()
    originals = spec.get("resourceClaims")
    for index, raw in enumerate(_raw_pod_claims(spec)):
        base = f"spec.resourceClaims[{index}]"
        if isinstance(originals, list):
            problems += _source_problems(originals[index], base)
        problems += _pod_claim_entry_problems(raw, base, pod_names)

    per_container: dict[tuple[str, int], set[str]] = {}
    for ref in container_claims(obj):
        seen = per_container.setdefault((ref.container_kind, ref.container_index), set())
        if not ref.name:
            problems.append((ref.path, "Required value"))
            continue
        key = ref.name
        if ref.request is not None:
            path = f"{ref.path}.request"
            problems += [(path, invalid_value(ref.request, m)) for m in dns_label_messages(ref.request)]
            key = f"{ref.name}/{ref.request}"
        if key in seen:
            problems.append((ref.path, f"Duplicate value: {_q(key)}"))
        elif ref.request is None and any(k.startswith(ref.name + "/") for k in seen):
            problems.append(
                (
                    ref.path,
                    f"Duplicate value: {_q(ref.name)} (already used through one of its requests)",
                )
            )
        elif ref.request is not None and ref.name in seen:
            problems.append(
                (
                    ref.path,
                    f"Duplicate value: {_q(ref.name)} (the whole claim is used, so not {_q(key)})",
                )
            )
        seen.add(key)
        if ref.name not in pod_names:
            # The apiserver's wording (field.NotFound with this detail).
            detail = "must be one of the names in pod.spec.resourceClaims" + (
                ": " + ", ".join(sorted(pod_names)) if pod_names else " which is empty"
            )
            problems.append((ref.path, f"Not found: {_q(ref.name)}: {detail}"))
    return problems


def check_pod_claims(obj: dict[str, Any], *, source: str | None = None) -> list[PodResourceClaim]:
    """Validate all claim references and return `spec.resourceClaims`; InvalidObject lists every problem."""
    problems = pod_claim_problems(obj)
    if problems:
        raise InvalidObject(problems, kind=_kind(obj), name=_name(obj), source=source)
    return pod_resource_claims(obj, source=source)


def _q(value: str) -> str:
    """A value quoted as the apiserver quotes it in field errors (Go %q)."""
    return json.dumps(value)


def _join(base: str, path: str) -> str:
    return f"{base}.{path}" if path else base


def _kind(obj: dict[str, Any]) -> str:
    kind = obj.get("kind")
    return kind if isinstance(kind, str) else "Pod"


def _name(obj: dict[str, Any]) -> str | None:
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        name = meta.get("name") or meta.get("generateName")
        namespace = meta.get("namespace")
        if isinstance(name, str):
            return f"{namespace}/{name}" if isinstance(namespace, str) and namespace else name
    return None
