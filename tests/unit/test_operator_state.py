"""The operator's caches: our writes over the watch's indexes, and the change journal."""

from __future__ import annotations

from typing import Any

from dra_operator.operator.state import CLAIMS, INDEXES, PODS, State

Json = dict[str, Any]


def claim(rv: str, **meta: Any) -> Json:
    return {"metadata": {"name": "c", "namespace": "ns", "resourceVersion": rv, **meta}}


def bound() -> tuple[State, dict[str, dict[Any, list[Json]]]]:
    indexes: dict[str, dict[Any, list[Json]]] = {name: {} for name in INDEXES}
    state = State()
    state.bind(indexes)
    return state, indexes


def test_a_write_that_finished_a_deletion_is_not_resurrected_by_the_overlay() -> None:
    """Dropping the last finalizer of a deleting object deletes it. When its DELETED watch event is handled
    before our write's answer, the answer must not bring it back (it held devices forever: found by the gang
    e2e test on a busy machine)."""
    state, indexes = bound()
    indexes[CLAIMS][("ns", "c")] = [claim("5")]
    indexes[CLAIMS].pop(("ns", "c"))  # the DELETED event came first
    state.forget(CLAIMS, ("ns", "c"))
    state.wrote(CLAIMS, claim("7", deletionTimestamp="2026-12-03T00:00:00Z", finalizers=[]))
    assert state.get(CLAIMS, ("ns", "c")) is None
    assert list(state.all(CLAIMS)) == []


def test_a_deletion_entry_goes_once_the_index_agrees() -> None:
    state, indexes = bound()
    indexes[CLAIMS][("ns", "c")] = [claim("5")]
    state.deleted(CLAIMS, claim("5"))
    assert state.get(CLAIMS, ("ns", "c")) is None, "hidden while the index still has it"
    indexes[CLAIMS].pop(("ns", "c"))
    assert state.get(CLAIMS, ("ns", "c")) is None
    assert state._overlay[CLAIMS] == {}, "no entry kept for a key gone everywhere"


def test_the_journal_lists_keys_changed_since_a_revision_oldest_first() -> None:
    state, _ = bound()
    start, _ = state.changes(CLAIMS, 0)
    state.touch(CLAIMS, ("ns", "a"))
    state.touch(CLAIMS, ("ns", "b"))
    middle, keys = state.changes(CLAIMS, start)
    assert keys == [("ns", "a"), ("ns", "b")]
    state.touch(CLAIMS, ("ns", "a"))  # touched again: listed once, at its latest change
    _, keys = state.changes(CLAIMS, start)
    assert keys == [("ns", "b"), ("ns", "a")]
    assert state.changes(CLAIMS, middle)[1] == [("ns", "a")]
    epoch = state.epoch
    state.reindex()
    assert state.epoch == epoch + 1, "a rebind voids every cursor"


def job_pod(name: str) -> Json:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": "uid-" + name,
            "labels": {"batch.kubernetes.io/controller-uid": "job-1", "batch.kubernetes.io/job-name": "pair"},
            "annotations": {"resource.dra-operator.io/gang-size": "2"},
        }
    }


def test_a_gang_member_noted_before_the_cache_stores_it_is_not_lost() -> None:
    """Kopf runs a Pod's index function before it stores the Pod, so another member's decision can look in
    between. The member must still count once stored (lost, a Job's gang waited forever: found in CI)."""
    state, indexes = bound()
    a, b = job_pod("a"), job_pod("b")
    state.note(PODS, a)
    indexes[PODS][("ns", "a")] = [a]
    state.note(PODS, b)  # b's index function ran; Kopf has not stored b yet
    assert [p["metadata"]["name"] for p in state.gang_pods("ns", "job:job-1")] == ["a"]
    indexes[PODS][("ns", "b")] = [b]
    assert [p["metadata"]["name"] for p in state.gang_pods("ns", "job:job-1")] == ["a", "b"]
    del indexes[PODS][("ns", "a")]
    state.forget_pod(a)
    assert [p["metadata"]["name"] for p in state.gang_pods("ns", "job:job-1")] == ["b"]
    del indexes[PODS][("ns", "b")]
    state.forget_pod(b)
    assert state._gangs == {}, "nothing kept for a gang whose Pods are all gone"
