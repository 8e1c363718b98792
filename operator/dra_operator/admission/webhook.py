"""Admission reviews: the mutation of workloads that use claims, the validation of DRA objects, the
AdmissionReview answers the API server reads, and applying our webhook configurations.

Reviews run on the admission server's own thread and loop (dra_operator.admission.server), so everything they
read of the operator's caches goes through `Caches`, whose implementation is safe to call from that thread.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from dra_operator.admission import configuration, validation
from dra_operator.admission.mutation import (
    AdmissionRejected,
    asks_for_extended_resources,
    claim_references,
    invalid_message,
    mutate,
)
from dra_operator.admission.ownership import Lookup, belongs_to_us
from dra_operator.admission.patch import json_patch
from dra_operator.api.group import UPSTREAM_API_VERSION
from dra_operator.kube.rest import KubeError, path_of

if TYPE_CHECKING:
    from dra_operator.kube.client import Kube

log = logging.getLogger(__name__)

Json = dict[str, Any]

#: How long a review waits for the caches before it is refused (the webhook timeout is 5 s).
READY_WAIT_SECONDS = 3.0


class Caches(Protocol):
    """What a review reads of the operator's caches; callable from the admission thread."""

    def claim_exists(self, namespace: str, name: str) -> bool: ...

    def template_exists(self, namespace: str, name: str) -> bool: ...

    def extended_resources(self) -> Mapping[str, str]:
        """Extended resource name -> the DeviceClass that declares it."""
        ...


class Refused(Exception):
    """A review's refusal: the HTTP-like code and the message `kubectl` prints."""

    def __init__(self, message: str, code: int = 422) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class AdmissionContext:
    """What reviews need: readiness, the cluster's DRA flavour, the caches for the ownership rule."""

    caches: Caches
    ready: threading.Event = field(default_factory=threading.Event)
    # A GET of a built-in DRA object (the ownership rule asks whether one exists); None: never looked up.
    builtin_get: Callable[[str], Awaitable[Json | None]] | None = None
    builtin_dra: bool = False
    # The node device plugin's extended resource, asked for by each container that uses claims; None when
    # devices are not delivered by a device plugin (env vars only).
    delivery_resource: str | None = None


async def owned_references(ctx: AdmissionContext, namespace: str, refs: list[dict[str, Any]]) -> set[str]:
    """The Pod claim names that belong to us (see dra_operator.admission.ownership)."""
    if not ctx.builtin_dra:
        return {ref["name"] for ref in refs}
    group, version = UPSTREAM_API_VERSION.split("/")
    owned: set[str] = set()
    for ref in refs:
        if ref.get("resourceClaimName"):
            kind, plural, target = "claim", "resourceclaims", str(ref["resourceClaimName"])
        else:
            kind, plural, target = "template", "resourceclaimtemplates", str(ref["resourceClaimTemplateName"])
        exists = ctx.caches.claim_exists if kind == "claim" else ctx.caches.template_exists
        ours_exists = exists(namespace, target)
        builtin_exists = False
        if not ours_exists and ctx.builtin_get is not None:
            try:
                found = await ctx.builtin_get(
                    path_of(plural, group=group, version=version, namespace=namespace, name=target)
                )
                builtin_exists = found is not None
            except KubeError as exc:  # cannot tell: the rule's default (ours) applies
                log.warning("cannot look up built-in %s %s/%s: %s", plural, namespace, target, exc)
        if belongs_to_us(Lookup(builtin_dra=True, ours_exists=ours_exists, builtin_exists=builtin_exists)):
            owned.add(ref["name"])
    return owned


async def review(ctx: AdmissionContext, kind: str, body: Mapping[str, Any], namespace: str | None) -> Json:
    """The mutated object for one admission review (or the unchanged one); raises Refused."""
    obj: Json = copy.deepcopy(dict(body))
    try:
        refs = claim_references(obj, kind)
    except AdmissionRejected as exc:
        raise Refused(str(exc)) from None
    if not refs and not asks_for_extended_resources(obj, kind):
        return obj
    if not ctx.ready.is_set() and not await asyncio.to_thread(ctx.ready.wait, READY_WAIT_SECONDS):
        raise Refused("dra-operator is starting and has not read the cluster yet; retry shortly", code=503)
    ns = namespace or str((obj.get("metadata") or {}).get("namespace") or "default")
    owned = await owned_references(ctx, ns, refs) if refs else set()
    try:
        return mutate(
            obj,
            kind,
            ours=lambda ref: ref["name"] in owned,
            delivery_resource=ctx.delivery_resource,
            extended=ctx.caches.extended_resources(),
        ).obj
    except AdmissionRejected as exc:
        raise Refused(str(exc)) from None


def validate(kind: str, body: Mapping[str, Any], old: Mapping[str, Any] | None) -> None:
    """Refuse (Refused, 422) a DRA object the built-in API would refuse for a CEL selector or claim
    metadata; answers from the object alone, so it needs no cache and no readiness."""
    found = validation.problems(kind, body, old)
    if found:
        raise Refused(invalid_message(kind, body, found))


#: URL path (without the leading slash) -> ("mutate" or "validate", kind).
ROUTES: dict[str, tuple[str, str]] = {
    **{configuration.handler_path(kind): ("mutate", kind) for kind in configuration.KINDS},
    **{configuration.validate_path(kind): ("validate", kind) for kind in validation.KINDS},
}


async def answer(ctx: AdmissionContext, route: str, request_body: bytes) -> Json:
    """The AdmissionReview (admission.k8s.io/v1) answering one request to `route`; raises ValueError for a
    body that is no AdmissionReview (the server answers 400)."""
    what, kind = ROUTES[route]
    try:
        document = json.loads(request_body)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    request = document.get("request") if isinstance(document, dict) else None
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise ValueError("not an AdmissionReview: request.uid is missing")
    obj = request.get("object")
    old = request.get("oldObject")
    response: Json = {"uid": request["uid"], "allowed": True}
    try:
        if not isinstance(obj, dict):
            raise Refused("the review carries no object", code=400)
        if what == "validate":
            validate(kind, obj, old if isinstance(old, dict) else None)
        else:
            new = await review(ctx, kind, obj, request.get("namespace"))
            ops = json_patch(obj, new)
            if ops:
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
    except Refused as exc:
        response = {
            "uid": request["uid"],
            "allowed": False,
            "status": {"code": exc.code, "message": str(exc)},
        }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


async def apply_configuration(kube: Kube, desired: dict[str, Any], operator_user: str | None = None) -> None:
    """Create or update the MutatingWebhookConfiguration `desired` and the ValidatingWebhookConfiguration
    derived from it (configuration.validating_from): idempotent on restarts, one endpoint and CA for both."""
    await _apply(kube, "mutatingwebhookconfigurations", desired)
    await _apply(
        kube, "validatingwebhookconfigurations", configuration.validating_from(desired, operator_user)
    )


async def _apply(kube: Kube, plural: str, desired: dict[str, Any]) -> None:
    """Create the configuration, or replace its webhooks when they differ."""
    path = path_of(plural, group="admissionregistration.k8s.io", name=desired["metadata"]["name"])
    collection = path_of(plural, group="admissionregistration.k8s.io")
    current = await kube.get(path)
    if current is None:
        await kube.create(collection, desired)
        return
    if current.get("webhooks") == desired["webhooks"]:
        return
    # Only the webhooks are ours: the object's metadata may belong to a Helm release (labels, annotations).
    await kube.replace(path, {**current, "webhooks": desired["webhooks"]})
