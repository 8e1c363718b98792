"""The operator's Kopf registry: watch-event and index handlers only, which is what lets it switch off Kopf's
per-object diff base (dra_operator.operator.kopfstorage); and the reactions to the informed kinds' events."""

from __future__ import annotations

import inspect
from typing import Any, cast

import kopf

from dra_operator.operator import handlers
from dra_operator.operator.informer import Watcher
from dra_operator.operator.reconciler import Reconciler
from dra_operator.operator.state import CLAIMS, INDEXES, NODES, PODS, SLICES, State

NO_KUBE = cast(Watcher, object())  # the informers are built, not run


def test_no_handler_needs_the_diff_base() -> None:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, State(), cast(Reconciler, object()), on_warm=lambda: None, kube=NO_KUBE)
    found: Any = registry
    assert found._watching.get_all_handlers(), "the watch-event handlers are registered"
    assert found._changing.get_all_handlers() == [], "on.create/update/delete/resume read the diff base"
    assert found._spawning.get_all_handlers() == [], "daemons and timers read the diff base"


def test_every_handler_and_index_function_runs_on_the_event_loop() -> None:
    """Kopf runs a plain function in its thread pool: a thread hop per watch event, and the State touched from
    a second thread. Coroutines run on the loop."""
    registry = kopf.OperatorRegistry()
    handlers.register(registry, State(), cast(Reconciler, object()), on_warm=lambda: None, kube=NO_KUBE)
    found: Any = registry
    registered = found._indexing.get_all_handlers() + found._watching.get_all_handlers()
    assert len(found._indexing.get_all_handlers()) == 3, "one index per kind Kopf caches"
    plain = [h.id for h in registered if not inspect.iscoroutinefunction(h.fn)]
    assert plain == [], f"run in Kopf's thread pool: {plain}"


def test_after_indexing_kopfs_raw_object_holds_only_what_the_cache_keeps() -> None:
    """Kopf parks each listed object with its raw event until every index has its first listing; the raw
    object shrinks to the cache's form at indexing (kopfpatch.hold_only), and the later handlers still read
    what they need from it."""
    import asyncio

    registry = kopf.OperatorRegistry()
    handlers.register(registry, State(), cast(Reconciler, object()), on_warm=lambda: None, kube=NO_KUBE)
    found: Any = registry
    by_id = {h.id: h.fn for h in found._indexing.get_all_handlers()}
    managed = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    meta = {"name": "t", "namespace": "ns", "uid": "u", "resourceVersion": "7", "managedFields": managed}
    raw = {"metadata": meta, "spec": {"spec": {"devices": {}}}}
    indexed = asyncio.run(by_id["dra_templates"](body=kopf.Body(raw)))
    assert "managedFields" not in raw["metadata"]
    assert raw["metadata"]["uid"] == "u" and raw["metadata"]["resourceVersion"] == "7"  # Kopf reads them
    assert list(indexed) == [("ns", "t")] and raw["spec"] == {"spec": {"devices": {}}}


class Reconciling:
    """What the informed kinds' handlers call on the reconciler."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.recorder = self

    def enqueue(self, *item: str, backlog: bool = False) -> None:
        self.calls.append(("backlog" if backlog else "enqueue", *item))

    def enqueue_gated(self, namespace: str | None = None) -> None:
        self.calls.append(("gated", namespace))

    def forget(self, uid: str) -> None:
        self.calls.append(("forget", uid))

    def forget_pod(self, uid: str) -> None:
        self.calls.append(("forget_pod", uid))


def informed() -> tuple[State, Reconciling, dict[str, Any], list[tuple[str, Any, bool]]]:
    state, reconciling, names = State(), Reconciling(), []
    informers = handlers.register(
        kopf.OperatorRegistry(),
        state,
        cast(Reconciler, reconciling),
        on_warm=lambda: None,
        on_name=lambda kind, key, exists: names.append((kind, key, exists)),
        kube=NO_KUBE,
    )
    by_kind = {informer.name: informer for informer in informers}
    assert sorted(by_kind) == sorted(handlers.INFORMED)
    state.bind({name: by_kind[name].store if name in by_kind else {} for name in INDEXES})
    return state, reconciling, by_kind, names


def hand(informer: Any, type: str | None, raw: dict[str, Any]) -> None:
    informer.apply(type, raw)


def test_a_nodes_status_update_is_no_change_to_placement() -> None:
    state, reconciling, informers, _ = informed()
    node = {"metadata": {"name": "n1", "labels": {"zone": "a"}}, "spec": {}, "status": {"images": ["x"]}}
    hand(informers[NODES], None, node)
    assert informers[NODES].store[("", "n1")][0] == {
        "metadata": {"name": "n1", "labels": {"zone": "a"}},
        "spec": {"unschedulable": None, "taints": None},
    }, "a Node's status is never kept"
    revision = state.revision_of(NODES)
    hand(informers[NODES], "MODIFIED", {**node, "status": {"images": ["y"]}})
    assert state.revision_of(NODES) == revision
    hand(informers[NODES], "MODIFIED", {**node, "spec": {"unschedulable": True}})
    assert state.revision_of(NODES) > revision
    assert reconciling.calls == [("gated", None)], "only a node added wakes the waiting Pods"


def test_a_slice_status_write_wakes_nobody_and_its_spec_change_does() -> None:
    state, reconciling, informers, _ = informed()
    meta = {"name": "s1", "generation": 1, "resourceVersion": "5"}
    slice_ = {"metadata": meta, "spec": {"driver": "d", "devices": [{"name": "gpu-0"}]}}
    hand(informers[SLICES], "ADDED", slice_)
    reconciling.calls.clear()
    revision = state.revision_of(SLICES)
    status = {**slice_, "metadata": {**meta, "resourceVersion": "6"}, "status": {"devices": 1}}
    hand(informers[SLICES], "MODIFIED", status)
    assert reconciling.calls == [] and state.revision_of(SLICES) == revision
    kept = informers[SLICES].store[("", "s1")][0]
    assert kept["status"] == {"devices": 1}
    respec = {**status, "metadata": {**meta, "generation": 2, "resourceVersion": "7"}}
    hand(informers[SLICES], "MODIFIED", respec)
    assert reconciling.calls == [("gated", None)] and state.revision_of(SLICES) > revision


def test_claims_are_named_to_admission_and_a_deleted_allocation_wakes_waiting_pods() -> None:
    state, reconciling, informers, names = informed()
    claim = {
        "metadata": {"name": "c", "namespace": "ns", "uid": "u1", "resourceVersion": "3"},
        "spec": {"devices": {"requests": []}},
        "status": {"allocation": {"devices": {"results": []}}},
    }
    hand(informers[CLAIMS], "ADDED", claim)
    assert names == [(CLAIMS, ("ns", "c"), True)]
    assert reconciling.calls == [("enqueue", "claim", "ns", "c"), ("gated", "ns")]
    assert state.get(CLAIMS, ("ns", "c")) is not None
    reconciling.calls.clear()
    hand(informers[CLAIMS], "DELETED", claim)
    assert names[-1] == (CLAIMS, ("ns", "c"), False)
    assert reconciling.calls == [("forget", "u1"), ("gated", None)]
    assert state.get(CLAIMS, ("ns", "c")) is None
    reconciling.calls.clear()
    hand(informers[CLAIMS], None, claim)  # listed: behind the Pods
    assert reconciling.calls == [("backlog", "claim", "ns", "c"), ("gated", "ns")]


def test_a_deleted_pod_sends_its_claims_round_and_leaves_no_lookup() -> None:
    state, reconciling, informers, _ = informed()
    owner = [{"uid": "pod-1", "controller": True, "kind": "Pod", "name": "p"}]
    claim = {"metadata": {"name": "p-gpu", "namespace": "ns", "uid": "c1", "ownerReferences": owner}}
    hand(informers[CLAIMS], "ADDED", claim)
    managed = [{"manager": "kubelet"}]
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "pod-1", "managedFields": managed},
        "spec": {"volumes": [{"name": "v"}], "containers": [{"name": "c", "image": "busybox"}]},
    }
    hand(informers[PODS], "ADDED", pod)
    kept = informers[PODS].store[("ns", "p")][0]
    assert "managedFields" not in kept["metadata"] and kept["spec"] == {"containers": [{"name": "c"}]}
    assert state.pod_by_uid("pod-1") is not None
    reconciling.calls.clear()
    hand(informers[PODS], "DELETED", pod)
    assert reconciling.calls == [("forget_pod", "pod-1"), ("enqueue", "claim", "ns", "p-gpu")]
    assert state.pod_by_uid("pod-1") is None and state.claims_of("pod-1") == []
