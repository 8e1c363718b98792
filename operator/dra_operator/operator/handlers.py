"""The operator's watches: our informers for the kinds counted in thousands, Kopf for the small ones, and
event reactions that only enqueue work.

Nodes, ResourceSlices, ResourceClaims and Pods are listed and watched by our informers
(dra_operator.operator.informer), which keep one slim copy per object and no per-object worker: Kopf's
per-object state was most of the operator's memory at cluster scale, and its per-event processing the largest
part of its CPU (issue 14). Pods are watched with a server-side label selector, so only Pods our webhook gated
are listed. Kopf keeps DeviceClasses, ResourceClaimTemplates and DeviceTaintRules, with event handlers only:
no on.create/on.update/timers/daemons, which make Kopf write annotations, status and finalizers on every
object. Nothing here writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import kopf

from dra_operator.admission import names
from dra_operator.api.group import GROUP, VERSION
from dra_operator.api.sharing import interned
from dra_operator.kube.rest import ours as our_path
from dra_operator.kube.rest import path_of
from dra_operator.operator.informer import Informer, Watcher
from dra_operator.operator.kopfpatch import hold_only
from dra_operator.operator.reconciler import Reconciler
from dra_operator.operator.state import (
    CLAIMS,
    CLASSES,
    INDEXES,
    NODES,
    PODS,
    SLICES,
    TAINT_RULES,
    TEMPLATES,
    Key,
    State,
    key_of,
    slim,
)
from dra_operator.operator.workqueue import CLAIM, POD

Json = dict[str, Any]


# Index functions are coroutines: Kopf runs a plain function in its thread pool, a hop per watch event (the
# pool's submit and worker were 11 % of the operator's CPU in a burst) and State touched from a second thread.
IndexFn = Callable[..., Awaitable[dict[tuple[str, str], Json]]]


def _keeping(kind: str) -> IndexFn:
    async def keep(body: kopf.Body, **_: Any) -> dict[tuple[str, str], Json]:
        # Index values are the object as listed/watched without what no decision reads (state.slim), a fresh
        # dict per event, never mutated afterwards.
        return {key_of(body): _held(body, slim(kind, body))}

    return keep


def _held(body: kopf.Body, kept: Json) -> Json:
    """`kept`, which the raw object behind `body` now holds too (kopfpatch.hold_only): the later handlers of
    this event read only what the cache keeps."""
    hold_only(body, kept)
    return kept


#: The kinds our informers list and watch; Kopf indexes the others.
INFORMED = (NODES, SLICES, CLAIMS, PODS)


def _node_form(node: Json) -> Json:
    """What placement reads of a Node: labels, unschedulable, taints. A Node's status (images, conditions,
    addresses: most of it) is never kept."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    form: Json = interned(
        {
            "metadata": {"name": meta.get("name"), "labels": meta.get("labels") or {}},  # copied by interned
            "spec": {"unschedulable": spec.get("unschedulable"), "taints": spec.get("taints")},
        }
    )
    return form


def _generation(obj: Json | None) -> Any:
    return ((obj or {}).get("metadata") or {}).get("generation")


def register(
    registry: kopf.OperatorRegistry,
    state: State,
    reconciler: Reconciler,
    on_warm: Callable[[], None],
    on_taints: Callable[[], None] = lambda: None,
    on_classes: Callable[[], None] = lambda: None,
    on_name: Callable[[str, Key, bool], None] = lambda kind, key, exists: None,
    *,
    kube: Watcher,
    namespaces: Sequence[str] = (),
) -> list[Informer]:
    """Register every Kopf handler on `registry`, and return the informers of the INFORMED kinds, which the
    caller runs beside Kopf (`kube` lists and watches; `namespaces`: where claims and Pods are watched,
    default everywhere).
    `on_name(kind, key, exists)`: a claim or template was added (or listed again) or deleted; the admission
    process mirrors their names."""

    def ours(plural: str) -> tuple[str, str, str]:
        return (GROUP, VERSION, plural)

    sources = {
        CLASSES: ours("deviceclasses"),
        TEMPLATES: ours("resourceclaimtemplates"),
        TAINT_RULES: ours("devicetaintrules"),
    }
    for index_id, resource in sources.items():
        kopf.index(*resource, id=index_id, registry=registry)(_keeping(index_id))

    # --- the informed kinds: Nodes, slices, claims, Pods -------------------------------------------------

    def claim_event(type: str | None, claim: Json, old: Json | None) -> None:
        namespace, name = key = key_of(claim)
        if type in (None, "ADDED", "DELETED"):
            on_name(CLAIMS, key, type != "DELETED")
        if type == "DELETED":
            state.forget(CLAIMS, key, claim)  # journaled too
            reconciler.recorder.forget(str((claim.get("metadata") or {}).get("uid")))
            if (claim.get("status") or {}).get("allocation"):
                reconciler.enqueue_gated()  # its devices are free again
            return
        state.note(CLAIMS, claim)
        state.settle(CLAIMS, key)
        state.touch(CLAIMS, key)
        # A listed claim (at start, or after a relist) waits behind the Pods, as on becoming leader: a Pod's
        # own claims come with its item, and 10,000 users' claims must not hold up the first Pod.
        reconciler.enqueue(CLAIM, namespace, name, backlog=type is None)
        annotations = (claim.get("metadata") or {}).get("annotations") or {}
        generated = names.POD_CLAIM_NAME_ANNOTATION in annotations
        if type in (None, "ADDED") and not generated:
            reconciler.enqueue_gated(namespace)  # a Pod may have waited for a claim of this name

    def slice_event(type: str | None, found: Json, old: Json | None) -> None:
        key = key_of(found)
        state.settle(SLICES, key)
        if type == "DELETED":
            # Our status write (poolstatus) left it in the overlay: without this it would outlive its deletion
            # there, and the allocator would still see its devices.
            state.forget(SLICES, key, found)
        elif type == "MODIFIED" and old is not None and _generation(old) == _generation(found):
            # metadata.generation moves only with the spec (the status is a subresource): the operator's own
            # status writes (the device counts, see poolstatus) must not send every waiting Pod round again.
            return
        state.touch(SLICES, key)
        reconciler.enqueue_gated()
        on_taints()

    def node_event(type: str | None, node: Json, old: Json | None) -> None:
        # The cache keeps what placement reads of each node (labels, taints, unschedulable): a status update
        # changes none of it, and must not make the next decision gather every node again.
        if type == "DELETED" or node != old:
            state.touch(NODES, key_of(node))
        if type in ("ADDED", None):
            reconciler.enqueue_gated()

    def pod_event(type: str | None, pod: Json, old: Json | None) -> None:
        namespace, name = key = key_of(pod)
        if type == "DELETED":
            state.forget(PODS, key, pod)
            uid = str((pod.get("metadata") or {}).get("uid"))
            reconciler.forget_pod(uid)
            for claim in state.claims_of(uid):
                if (claim.get("metadata") or {}).get("namespace") == namespace:
                    reconciler.enqueue(CLAIM, namespace, str(claim["metadata"].get("name")))
            state.forget_pod(pod)
            return
        state.note(PODS, pod)
        state.settle(PODS, key)
        reconciler.enqueue(POD, namespace, name)

    def slice_form(raw: Json) -> Json:
        # A status write (the pool-status pass writes them) keeps the spec already held (state.slim).
        return slim(SLICES, raw, state.get(SLICES, key_of(raw)))

    def claim_form(raw: Json) -> Json:
        return slim(CLAIMS, raw)

    def pod_form(raw: Json) -> Json:
        return slim(PODS, raw)

    scopes: list[str | None] = [*namespaces] or [None]
    informers = {
        NODES: Informer(kube, NODES, [path_of("nodes")], form=_node_form, on_event=node_event),
        SLICES: Informer(kube, SLICES, [our_path("resourceslices")], form=slice_form, on_event=slice_event),
        CLAIMS: Informer(
            kube,
            CLAIMS,
            [our_path("resourceclaims", namespace) for namespace in scopes],
            form=claim_form,
            on_event=claim_event,
        ),
        # Only the Pods our webhook gated carry the label: the others are never listed.
        PODS: Informer(
            kube,
            PODS,
            [path_of("pods", namespace=namespace) for namespace in scopes],
            form=pod_form,
            on_event=pod_event,
            label_selector=f"{names.MANAGED_LABEL}={names.MANAGED_VALUE}",
        ),
    }

    async def warm(**kwargs: Any) -> None:
        # Kopf holds every watch handler until all its indexes have finished their first listing; the
        # informers' caches are complete once they have theirs. Then bind the caches, let the informers'
        # events through, and open the webhook and the worker.
        if state.bound:
            return
        await asyncio.gather(*(informer.listed() for informer in informers.values()))
        if not state.bound:
            caches = {name: kwargs[name] for name in INDEXES if name not in informers}
            state.bind({**caches, **{kind: informer.store for kind, informer in informers.items()}})
            for informer in informers.values():
                informer.open()
            on_warm()

    @kopf.on.event("v1", "namespaces", id="readiness", registry=registry)
    async def namespaces_seen(**kwargs: Any) -> None:
        # Some namespace always exists (default, kube-system): this handler is sure to fire once at start.
        await warm(**kwargs)

    @kopf.on.event(*ours("resourceclaimtemplates"), id="templates", registry=registry)
    async def templates(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
        await warm(**kwargs)
        if type in (None, "ADDED", "DELETED"):
            on_name(TEMPLATES, key_of(body), type != "DELETED")
        if type != "DELETED":
            reconciler.enqueue_gated(key_of(body)[0])

    @kopf.on.event(*ours("deviceclasses"), id="deviceclasses", registry=registry)
    async def classes(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
        await warm(**kwargs)
        state.touch(CLASSES, key_of(body))
        on_classes()
        reconciler.enqueue_gated()

    rule_generations: dict[tuple[str, str], Any] = {}

    @kopf.on.event(*ours("devicetaintrules"), id="devicetaintrules", registry=registry)
    async def taint_rules(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
        await warm(**kwargs)
        if type == "DELETED":
            state.forget(TAINT_RULES, key_of(body), body)  # our status write may have left it in the overlay
            rule_generations.pop(key_of(body), None)
        elif (body.get("metadata") or {}).get("generation") != rule_generations.get(key_of(body)):
            state.touch(TAINT_RULES, key_of(body))  # not for our own status writes
            rule_generations[key_of(body)] = (body.get("metadata") or {}).get("generation")
        else:
            state.settle(TAINT_RULES, key_of(body))  # our status write came back
        reconciler.enqueue_gated()  # a rule removed or narrowed frees devices
        on_taints()

    return list(informers.values())
