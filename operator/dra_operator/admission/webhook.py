"""Kopf admission handlers (mutating: one per workload kind; validating: one per DRA kind with CEL selectors)
and applying our webhook configurations."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from dra_operator.admission import configuration, validation
from dra_operator.admission.mutation import (
    AdmissionRejected,
    asks_for_extended_resources,
    claim_references,
    declared_extended_resources,
    invalid_message,
    mutate,
)
from dra_operator.admission.ownership import Lookup, belongs_to_us
from dra_operator.api.resource import GROUP, UPSTREAM_API_VERSION, VERSION
from dra_operator.kube.client import Kube, KubeError, path_of
from dra_operator.operator.state import CLAIMS, CLASSES, TEMPLATES, State

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
    if not refs and not asks_for_extended_resources(obj, kind):
        return obj
    if not ctx.ready.is_set():
        try:
            await asyncio.wait_for(ctx.ready.wait(), READY_WAIT_SECONDS)
        except TimeoutError:
            raise kopf.AdmissionError(
                "dra-operator is starting and has not read the cluster yet; retry shortly", code=503
            ) from None
    ns = namespace or str((obj.get("metadata") or {}).get("namespace") or "default")
    owned = await owned_references(ctx, ns, refs) if refs else set()
    try:
        return mutate(
            obj,
            kind,
            ours=lambda ref: ref["name"] in owned,
            delivery_resource=ctx.delivery_resource,
            extended=declared_extended_resources(ctx.state.all(CLASSES)),
        ).obj
    except AdmissionRejected as exc:
        raise kopf.AdmissionError(str(exc), code=422) from None


def validate(kind: str, body: Mapping[str, Any], old: Mapping[str, Any] | None) -> None:
    """Refuse (kopf.AdmissionError, 422) a DRA object the built-in API would refuse for a CEL selector or
    claim metadata; answers from the object alone, so it needs no cache and no readiness."""
    found = validation.problems(kind, body, old)
    if found:
        raise kopf.AdmissionError(invalid_message(kind, body, found), code=422)


def register(registry: kopf.OperatorRegistry, ctx: AdmissionContext) -> None:
    """One async mutate handler per workload kind, at URL path `mutate-<plural>` (the handler id), and one
    validate handler per DRA kind at `validate-<plural>`."""
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

    for kind in validation.KINDS:

        def make_validator(kind: str) -> Any:
            async def handler(body: kopf.Body, old: kopf.Body | None = None, **_: Any) -> None:
                validate(kind, body, old)

            return handler

        _, operations, _ = configuration.VALIDATED[kind]
        kopf.on.validate(
            GROUP,
            VERSION,
            validation.KINDS[kind],
            id=configuration.validate_path(kind),
            operations=list(operations),  # type: ignore[arg-type]
            registry=registry,
        )(make_validator(kind))


async def apply_configuration(kube: Kube, desired: dict[str, Any]) -> None:
    """Create or update the MutatingWebhookConfiguration `desired` and the ValidatingWebhookConfiguration
    derived from it (configuration.validating_from): idempotent on restarts, one endpoint and CA for both."""
    await _apply(kube, "mutatingwebhookconfigurations", desired)
    await _apply(kube, "validatingwebhookconfigurations", configuration.validating_from(desired))


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
