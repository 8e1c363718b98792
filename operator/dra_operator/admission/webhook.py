"""Kopf mutating-admission handlers (one async handler per kind) and applying our webhook configuration."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from dra_operator.admission import configuration
from dra_operator.admission.mutation import AdmissionRejected, claim_references, mutate
from dra_operator.admission.ownership import Lookup, belongs_to_us
from dra_operator.api.resource import UPSTREAM_API_VERSION
from dra_operator.kube.client import Kube, KubeError, path_of
from dra_operator.operator.state import CLAIMS, TEMPLATES, State

log = logging.getLogger(__name__)

#: How long a review waits for the caches before it is refused (the webhook timeout is 5 s).
READY_WAIT_SECONDS = 3.0


@dataclass
class AdmissionContext:
    """What the handlers need: readiness, the cluster's DRA flavour, the caches for the ownership rule."""

    state: State
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    kube: Kube | None = None
    builtin_dra: bool = False
    reviews: int = 0


async def owned_references(ctx: AdmissionContext, namespace: str, refs: list[dict[str, Any]]) -> set[str]:
    """The Pod claim names that belong to us (see dra_operator.admission.ownership)."""
    if not ctx.builtin_dra:
        return {ref["name"] for ref in refs}
    group, version = UPSTREAM_API_VERSION.split("/")
    owned: set[str] = set()
    for ref in refs:
        if ref.get("resourceClaimName"):
            kind, plural, target = CLAIMS, "resourceclaims", str(ref["resourceClaimName"])
        else:
            kind, plural, target = TEMPLATES, "resourceclaimtemplates", str(ref["resourceClaimTemplateName"])
        ours_exists = ctx.state.get(kind, (namespace, target)) is not None
        builtin_exists = False
        if not ours_exists and ctx.kube is not None:
            try:
                found = await ctx.kube.get(
                    path_of(plural, group=group, version=version, namespace=namespace, name=target)
                )
                builtin_exists = found is not None
            except KubeError as exc:  # cannot tell: the rule's default (ours) applies
                log.warning("cannot look up built-in %s %s/%s: %s", plural, namespace, target, exc)
        if belongs_to_us(Lookup(builtin_dra=True, ours_exists=ours_exists, builtin_exists=builtin_exists)):
            owned.add(ref["name"])
    return owned


async def review(
    ctx: AdmissionContext, kind: str, body: Mapping[str, Any], namespace: str | None
) -> dict[str, Any]:
    """The mutated object for one admission review (or the unchanged one); raises kopf.AdmissionError."""
    ctx.reviews += 1
    obj: dict[str, Any] = copy.deepcopy(dict(body))
    try:
        refs = claim_references(obj, kind)
    except AdmissionRejected as exc:
        raise kopf.AdmissionError(str(exc), code=422) from None
    if not refs:
        return obj
    if not ctx.ready.is_set():
        try:
            await asyncio.wait_for(ctx.ready.wait(), READY_WAIT_SECONDS)
        except TimeoutError:
            raise kopf.AdmissionError(
                "dra-operator is starting and has not read the cluster yet; retry shortly", code=503
            ) from None
    ns = namespace or str((obj.get("metadata") or {}).get("namespace") or "default")
    owned = await owned_references(ctx, ns, refs)
    return mutate(obj, kind, ours=lambda ref: ref["name"] in owned).obj


def register(registry: kopf.OperatorRegistry, ctx: AdmissionContext) -> None:
    """One async mutate handler per kind, at URL path `mutate-<plural>` (the handler id)."""
    for kind, (group, version, plural, operations) in configuration.KINDS.items():
        resource = (version, plural) if not group else (group, version, plural)

        def make(kind: str) -> Any:
            async def handler(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
                new = await review(ctx, kind, body, kwargs.get("namespace"))
                if new != dict(body):

                    def replace(raw: Any) -> None:
                        raw.clear()
                        raw.update(copy.deepcopy(new))

                    patch.fns.append(replace)

            return handler

        kopf.on.mutate(
            *resource,
            id=configuration.handler_path(kind),
            operations=list(operations),  # type: ignore[arg-type]
            registry=registry,
        )(make(kind))


async def apply_configuration(kube: Kube, desired: dict[str, Any]) -> None:
    """Create the MutatingWebhookConfiguration, or replace it when it differs (idempotent on restarts)."""
    path = path_of(
        "mutatingwebhookconfigurations",
        group="admissionregistration.k8s.io",
        name=desired["metadata"]["name"],
    )
    collection = path_of("mutatingwebhookconfigurations", group="admissionregistration.k8s.io")
    current = await kube.get(path)
    if current is None:
        await kube.create(collection, desired)
        return
    if current.get("webhooks") == desired["webhooks"]:
        return
    # Only the webhooks are ours: the object's metadata may belong to a Helm release (labels, annotations).
    await kube.replace(path, {**current, "webhooks": desired["webhooks"]})
