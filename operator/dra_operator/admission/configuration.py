"""The Mutating- and ValidatingWebhookConfiguration the operator owns and applies at start (not Kopf's
managed mode).

Mutating: one webhook per workload kind, each sent only objects whose Pod (template) carries
`spec.resourceClaims`, or has a container asking for an extended resource that one of our DeviceClasses
declares (matchConditions; the names change with the classes, so the leader re-applies), failing closed (a
Pod with claims must never slip past ungated), with a short timeout and a namespaceSelector that leaves
kube-system and the operator's own namespace alone, and, when the operator watches only some namespaces
(`--namespace`), every other one: a Pod gated where no replica looks would wait for ever.

Validating: one webhook per DRA kind with CEL selectors (see dra_operator.admission.validation), sent only
objects that carry selectors (or, for templates, claim metadata) and only on create or when the spec changed,
so the operator's own metadata writes (finalizers) never depend on it; failing closed too, as the built-in
API never stores a selector that does not compile. Both share the endpoint and CA, so the validating one is
derived from the mutating one (`validating_from`) and the two are always applied together.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dra_operator.admission import validation
from dra_operator.admission.mutation import TEMPLATE_PATHS
from dra_operator.admission.names import POD_CLAIM_NAME_ANNOTATION
from dra_operator.api.group import GROUP, VERSION

CONFIGURATION_NAME = "dra-operator"
#: Set on every namespace by the API server (since 1.22).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
WEBHOOK_SUFFIX = ".resource.dra-operator.io"

#: kind -> (API group, version, plural, operations)
KINDS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "Pod": ("", "v1", "pods", ("CREATE",)),
    "Job": ("batch", "v1", "jobs", ("CREATE", "UPDATE")),
    "CronJob": ("batch", "v1", "cronjobs", ("CREATE", "UPDATE")),
    "Deployment": ("apps", "v1", "deployments", ("CREATE", "UPDATE")),
    "StatefulSet": ("apps", "v1", "statefulsets", ("CREATE", "UPDATE")),
    "DaemonSet": ("apps", "v1", "daemonsets", ("CREATE", "UPDATE")),
    "ReplicaSet": ("apps", "v1", "replicasets", ("CREATE", "UPDATE")),
}


def handler_path(kind: str) -> str:
    """The URL path (and Kopf handler id) of one kind's webhook."""
    return "mutate-" + KINDS[kind][2]


def validate_path(kind: str) -> str:
    """The URL path (and Kopf handler id) of one DRA kind's validating webhook."""
    return "validate-" + validation.KINDS[kind]


#: CEL over a ResourceClaimSpec at `spec`: some request carries selectors (directly or in a subrequest).
_CLAIM_SELECTORS = (
    "has({spec}.devices) && has({spec}.devices.requests) && {spec}.devices.requests.exists(r, "
    "(has(r.exactly) && has(r.exactly.selectors) && size(r.exactly.selectors) > 0) || "
    "(has(r.firstAvailable) && r.firstAvailable.exists(s, has(s.selectors) && size(s.selectors) > 0)))"
)

#: kind -> (scope, operations, CEL matchCondition: the object carries something the webhook checks)
VALIDATED: dict[str, tuple[str, tuple[str, ...], str]] = {
    "DeviceClass": (
        "Cluster",
        ("CREATE", "UPDATE"),
        "has(object.spec) && has(object.spec.selectors) && size(object.spec.selectors) > 0",
    ),
    "ResourceClaim": ("Namespaced", ("CREATE", "UPDATE"), _CLAIM_SELECTORS.format(spec="object.spec")),
    "ResourceClaimTemplate": (
        "Namespaced",
        ("CREATE", "UPDATE"),
        "has(object.spec.metadata) || (has(object.spec.spec) && "
        + _CLAIM_SELECTORS.format(spec="object.spec.spec")
        + ")",
    ),
    "DeviceTaintRule": (
        "Cluster",
        ("CREATE", "UPDATE"),
        "has(object.spec) && has(object.spec.deviceSelector) && has(object.spec.deviceSelector.selectors)"
        " && size(object.spec.deviceSelector.selectors) > 0",
    ),
}
#: Updates are only sent when the spec changed: unchanged selectors were checked when they were stored.
SPEC_CHANGED = "request.operation == 'CREATE' || !has(oldObject.spec) || object.spec != oldObject.spec"


def not_generated_by(user: str) -> str:
    """CEL for matchConditions: the object is not a claim `user` generated for a Pod (both must hold: a
    local run may share its user with the people whose claims it must still check)."""
    annotation = json.dumps(POD_CLAIM_NAME_ANNOTATION)
    return (
        f"request.userInfo.username != {json.dumps(user)} || !has(object.metadata.annotations) || "
        f"!({annotation} in object.metadata.annotations)"
    )


def claims_condition(kind: str, extended_names: Sequence[str] = ()) -> str:
    """CEL for matchConditions: the object's Pod (template) spec has a non-empty resourceClaims list, or a
    container (init or not) whose limits or requests name one of `extended_names`."""
    spec = ".".join(["object", *TEMPLATE_PATHS[kind], "spec"])
    guards = []
    node = "object"
    for key in (*TEMPLATE_PATHS[kind], "spec"):
        guards.append(f"has({node}.{key})")
        node = f"{node}.{key}"
    claims = " && ".join([*guards, f"has({spec}.resourceClaims)", f"size({spec}.resourceClaims) > 0"])
    if not extended_names:
        return claims
    listed = "[" + ", ".join(json.dumps(name) for name in sorted(set(extended_names))) + "]"
    asks = " || ".join(
        f"(has(c.resources.{section}) && c.resources.{section}.exists(k, k in {listed}))"
        for section in ("limits", "requests")
    )
    in_containers = f"{spec}.containers.exists(c, has(c.resources) && ({asks}))"
    in_init = f"(has({spec}.initContainers) && {spec}.initContainers.exists(c, has(c.resources) && ({asks})))"
    return f"({claims}) || ({' && '.join(guards)} && ({in_containers} || {in_init}))"


def namespace_selector(excluded: Sequence[str], watched: Sequence[str] = ()) -> dict[str, Any]:
    """Namespaces by name: none of `excluded`, and one of `watched` unless that is empty."""
    expressions = [{"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": sorted(set(excluded))}]
    if watched:
        expressions.append({"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": sorted(set(watched))})
    return {"matchExpressions": expressions}


@dataclass(frozen=True)
class Endpoint:
    """Where the API server reaches the webhook: a URL base (local runs) or a Service (in-cluster)."""

    url: str | None = None  # e.g. https://127.0.0.1:9443
    service_name: str | None = None
    service_namespace: str | None = None
    service_port: int = 443

    def client_config(self, path: str, ca_bundle: bytes) -> dict[str, Any]:
        config: dict[str, Any] = {"caBundle": base64.b64encode(ca_bundle).decode("ascii")}
        if self.service_name:
            config["service"] = {
                "name": self.service_name,
                "namespace": self.service_namespace or "default",
                "path": "/" + path,
                "port": self.service_port,
            }
        else:
            config["url"] = f"{(self.url or '').rstrip('/')}/{path}"
        return config


def build(
    endpoint: Endpoint,
    ca_bundle: bytes,
    *,
    excluded_namespaces: list[str],
    name: str = CONFIGURATION_NAME,
    timeout_seconds: int = 5,
    extended_names: Sequence[str] = (),
    watched_namespaces: Sequence[str] = (),
) -> dict[str, Any]:
    """The whole MutatingWebhookConfiguration object (`extended_names`: the extended resources our
    DeviceClasses declare; `watched_namespaces`: the only namespaces whose objects are sent, empty: all)."""
    webhooks = []
    for kind, (group, version, plural, operations) in KINDS.items():
        path = handler_path(kind)
        webhooks.append(
            {
                "name": plural + WEBHOOK_SUFFIX,
                "admissionReviewVersions": ["v1"],
                "clientConfig": endpoint.client_config(path, ca_bundle),
                "rules": [
                    {
                        "apiGroups": [group],
                        "apiVersions": [version],
                        "resources": [plural],
                        "operations": list(operations),
                        "scope": "Namespaced",
                    }
                ],
                "matchConditions": [
                    {"name": "has-resource-claims", "expression": claims_condition(kind, extended_names)}
                ],
                "namespaceSelector": namespace_selector(excluded_namespaces, watched_namespaces),
                "failurePolicy": "Fail",
                "matchPolicy": "Equivalent",
                "sideEffects": "None",
                "timeoutSeconds": timeout_seconds,
                "reinvocationPolicy": "IfNeeded",
            }
        )
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "dra-operator"}},
        "webhooks": webhooks,
    }


def _retarget(client_config: dict[str, Any], path: str) -> dict[str, Any]:
    """The same endpoint and CA as `client_config`, at another URL path."""
    config = dict(client_config)
    if "service" in config:
        config["service"] = {**config["service"], "path": "/" + path}
    else:
        config["url"] = str(config.get("url", "")).rsplit("/", 1)[0] + "/" + path
    return config


def validating_from(mutating: dict[str, Any], operator_user: str | None = None) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration of the same name, endpoint and CA as a `build` result.

    `operator_user`: the operator's own user name; the claims it generates for Pods are not sent. They are
    copies of a ResourceClaimTemplate's spec, whose selectors this webhook checked when the template was
    stored (or the claims of extended resources, whose selectors the operator writes itself), and a call per
    Pod on the operator's path to placing it costs the API server as much as the Pod's own webhook call
    (bench/README.md)."""
    client_config = mutating["webhooks"][0]["clientConfig"]
    timeout = mutating["webhooks"][0].get("timeoutSeconds", 5)
    webhooks = []
    for kind, (scope, operations, condition) in VALIDATED.items():
        plural = validation.KINDS[kind]
        webhooks.append(
            {
                "name": plural + WEBHOOK_SUFFIX,
                "admissionReviewVersions": ["v1"],
                "clientConfig": _retarget(client_config, validate_path(kind)),
                "rules": [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": [VERSION],
                        "resources": [plural],
                        "operations": list(operations),
                        "scope": scope,
                    }
                ],
                "matchConditions": [
                    {"name": "spec-changed", "expression": SPEC_CHANGED},
                    {"name": "has-checked-fields", "expression": condition},
                    *(
                        [
                            {
                                "name": "not-generated-by-dra-operator",
                                "expression": not_generated_by(operator_user),
                            }
                        ]
                        if operator_user and kind == "ResourceClaim"
                        else []
                    ),
                ],
                "failurePolicy": "Fail",
                "matchPolicy": "Equivalent",
                "sideEffects": "None",
                "timeoutSeconds": timeout,
            }
        )
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": mutating["metadata"]["name"], "labels": dict(mutating["metadata"]["labels"])},
        "webhooks": webhooks,
    }
