"""Kopf watch handlers: indexes of the cluster, and event reactions that only enqueue work.

Kopf writes nothing for these.
No on.create/on.update/timers/daemons: those make Kopf write annotations, status and finalizers on every
object. Pods are watched with a server-side label selector, so only Pods our webhook gated are listed and
indexed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from dra_operator.admission import names
from dra_operator.api.group import GROUP, VERSION
from dra_operator.operator.kopfpatch import hold_only
from dra_operator.operator.reconciler import CLAIM, POD, Reconciler
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


def _node_form(body: kopf.Body) -> Json:
    """What placement reads of a Node: labels, unschedulable, taints."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    return {
        "metadata": {"name": meta.get("name"), "labels": dict(meta.get("labels") or {})},
        "spec": {"unschedulable": spec.get("unschedulable"), "taints": spec.get("taints")},
    }


async def _node(body: kopf.Body, **_: Any) -> dict[tuple[str, str], Json]:
    form = _node_form(body)
    # The raw Node keeps its metadata (Kopf reads uid and resourceVersion), not its status: images,
    # conditions and addresses are most of a Node, and no handler reads them.
    hold_only(body, {k: v for k, v in slim(NODES, body).items() if k != "status"})
    return {key_of(body): form}


def register(
    registry: kopf.OperatorRegistry,
    state: State,
    reconciler: Reconciler,
    on_warm: Callable[[], None],
    on_taints: Callable[[], None] = lambda: None,
    on_classes: Callable[[], None] = lambda: None,
    on_name: Callable[[str, Key, bool], None] = lambda kind, key, exists: None,
) -> None:
    """Register every handler on `registry`. `on_name(kind, key, exists)`: a claim or template was added (or
    listed again) or deleted; the admission process mirrors their names."""

    def ours(plural: str) -> tuple[str, str, str]:
        return (GROUP, VERSION, plural)

    sources = {
        CLASSES: ours("deviceclasses"),
        SLICES: ours("resourceslices"),
        CLAIMS: ours("resourceclaims"),
        TEMPLATES: ours("resourceclaimtemplates"),
        PODS: ("v1", "pods"),
        NODES: ("v1", "nodes"),
        TAINT_RULES: ours("devicetaintrules"),
    }

    def noting(kind: str) -> IndexFn:
        async def index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], Json]:
            state.note(kind, body)  # the uid lookups move with the index, in the same step
            return {key_of(body): _held(body, slim(kind, body))}

        return index

    async def slice_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], Json]:
        # A status write (the pool-status pass writes them) keeps the spec already held (state.slim).
        key = key_of(body)
        return {key: _held(body, slim(SLICES, body, state.get(SLICES, key)))}

    for index_id, resource in sources.items():
        fn = (
            _node
            if index_id == NODES
            else slice_index
            if index_id == SLICES
            else noting(index_id)
            if index_id in (CLAIMS, PODS)
            else _keeping(index_id)
        )
        kopf.index(*resource, id=index_id, registry=registry)(fn)

    def warm(**kwargs: Any) -> None:
        # Kopf holds every watch handler until all indexes have finished their first listing, so the first
        # call of any handler means the caches are complete: bind the indexes and open the webhook and the
        # worker.
        if not state.bound:
            state.bind({name: kwargs[name] for name in INDEXES})
            on_warm()

    @kopf.on.event("v1", "namespaces", id="readiness", registry=registry)
    async def namespaces(**kwargs: Any) -> None:
        # Some namespace always exists (default, kube-system): this handler is sure to fire once at start.
        warm(**kwargs)

    @kopf.on.event(
        "v1", "pods", id="pods", registry=registry, labels={names.MANAGED_LABEL: names.MANAGED_VALUE}
    )
    async def pods(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
        warm(**kwargs)
        namespace, name = key_of(body)
        if type == "DELETED":
            state.forget(PODS, (namespace, name))
            uid = str(body.get("metadata", {}).get("uid"))
            reconciler.forget_pod(uid)
            for claim in state.claims_of(uid):
                meta = claim.get("metadata") or {}
                if meta.get("namespace") == namespace:
                    reconciler.enqueue(CLAIM, namespace, str(meta.get("name")))
            state.forget_pod(body)
            return
        state.settle(PODS, (namespace, name))
        reconciler.enqueue(POD, namespace, name)

    @kopf.on.event(*ours("resourceclaims"), id="claims", registry=registry)
    async def claims(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
        warm(**kwargs)
        namespace, name = key_of(body)
        if type in (None, "ADDED", "DELETED"):
            on_name(CLAIMS, (namespace, name), type != "DELETED")
        if type == "DELETED":
            state.forget(CLAIMS, (namespace, name))  # journaled too
            reconciler.recorder.forget(str(body.get("metadata", {}).get("uid")))
            if (body.get("status") or {}).get("allocation"):
                reconciler.enqueue_gated()  # its devices are free again
            return
        state.settle(CLAIMS, (namespace, name))
        state.touch(CLAIMS, (namespace, name))  # the index holds this event's object by now
        reconciler.enqueue(CLAIM, namespace, name)
        generated = names.POD_CLAIM_NAME_ANNOTATION in (body.get("metadata", {}).get("annotations") or {})
        if type in (None, "ADDED") and not generated:
            reconciler.enqueue_gated(namespace)  # a Pod may have waited for a claim of this name

    @kopf.on.event(*ours("resourceclaimtemplates"), id="templates", registry=registry)
    async def templates(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
        warm(**kwargs)
        if type in (None, "ADDED", "DELETED"):
            on_name(TEMPLATES, key_of(body), type != "DELETED")
        if type != "DELETED":
            reconciler.enqueue_gated(key_of(body)[0])

    @kopf.on.event(*ours("deviceclasses"), id="deviceclasses", registry=registry)
    async def classes(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
        warm(**kwargs)
        state.touch(CLASSES, key_of(body))
        on_classes()
        reconciler.enqueue_gated()

    # metadata.generation moves only with the spec (the status is a subresource): the operator's own
    # status writes (the device counts, see poolstatus) must not send every waiting Pod round again.
    slice_generations: dict[str, int] = {}

    @kopf.on.event(*ours("resourceslices"), id="resourceslices", registry=registry)
    async def slices(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
        warm(**kwargs)
        name, generation = str(body.metadata.name), int(body.metadata.get("generation") or 0)
        state.settle(SLICES, key_of(body))
        if type == "DELETED":
            slice_generations.pop(name, None)
            # Our status write (poolstatus) left it in the overlay: without this it would outlive its deletion
            # there, and the allocator would still see its devices.
            state.forget(SLICES, key_of(body))
        elif type == "MODIFIED" and slice_generations.get(name) == generation:
            return
        else:
            slice_generations[name] = generation
        state.touch(SLICES, key_of(body))
        reconciler.enqueue_gated()
        on_taints()

    rule_generations: dict[tuple[str, str], Any] = {}

    @kopf.on.event(*ours("devicetaintrules"), id="devicetaintrules", registry=registry)
    async def taint_rules(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
        warm(**kwargs)
        if type == "DELETED":
            state.forget(TAINT_RULES, key_of(body))  # our status write may have left it in the overlay
            rule_generations.pop(key_of(body), None)
        elif (body.get("metadata") or {}).get("generation") != rule_generations.get(key_of(body)):
            state.touch(TAINT_RULES, key_of(body))  # not for our own status writes
            rule_generations[key_of(body)] = (body.get("metadata") or {}).get("generation")
        else:
            state.settle(TAINT_RULES, key_of(body))  # our status write came back
        reconciler.enqueue_gated()  # a rule removed or narrowed frees devices
        on_taints()

    # What placement reads of each node (labels, taints, unschedulable): a status update changes none of it,
    # and must not make the next decision gather every node again.
    node_forms: dict[tuple[str, str], Json] = {}

    @kopf.on.event("v1", "nodes", id="nodes", registry=registry)
    async def nodes(body: kopf.Body, type: str | None, **kwargs: Any) -> None:
        warm(**kwargs)
        key = key_of(body)
        if type == "DELETED":
            node_forms.pop(key, None)
            state.touch(NODES, key)
        else:
            form = _node_form(body)
            if node_forms.get(key) != form:
                node_forms[key] = form
                state.touch(NODES, key)
        if type in ("ADDED", None):
            reconciler.enqueue_gated()
