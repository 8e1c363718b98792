"""The operator's caches: our writes over the watch's indexes, and the change journal."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dra_operator.admission import names
from dra_operator.admission.delivery import container_devices, delivery_containers
from dra_operator.api.gang import gang_of
from dra_operator.operator import state as state_module
from dra_operator.operator.placement import (
    is_done,
    is_gated,
    pod_claim_refs,
    pod_fits_node,
    pod_patch,
)
from dra_operator.operator.state import CLAIMS, INDEXES, LAST_APPLIED, PODS, SLICES, State, key_of, slim

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


def test_our_written_copy_goes_once_the_watch_brings_the_same_version() -> None:
    """An object we wrote is held once: when the index stores the version our write made, the overlay's copy
    goes (before, it stayed until that object changed again, doubling every claim and slice we wrote)."""
    state, indexes = bound()
    indexes[CLAIMS][("ns", "c")] = [claim("5")]
    state.wrote(CLAIMS, claim("6", labels={"ours": "yes"}))
    state.settle(CLAIMS, ("ns", "c"))
    assert state.get(CLAIMS, ("ns", "c")) == claim("6", labels={"ours": "yes"}), "the index is behind"
    indexes[CLAIMS][("ns", "c")] = [claim("6", labels={"ours": "yes"})]
    state.settle(CLAIMS, ("ns", "c"))
    assert state._overlay[CLAIMS] == {}
    assert state.get(CLAIMS, ("ns", "c")) == claim("6", labels={"ours": "yes"})


def test_an_assumed_object_is_read_until_its_write_answers_or_is_undone() -> None:
    state, indexes = bound()
    indexes[CLAIMS][("ns", "c")] = [claim("5")]
    first = claim("5", labels={"allocated": "a"})
    undo_first = state.assume(CLAIMS, first)
    assert state.get(CLAIMS, ("ns", "c")) is first, "the index's copy of the same version does not hide it"
    assert state.changes(CLAIMS, 0)[1] == [("ns", "c")], "journaled: the allocator's view catches up"
    serial = state.assumption(CLAIMS, first)
    assert serial is not None and state.assumption(CLAIMS, claim("5")) is None
    undo_first()
    assert state.get(CLAIMS, ("ns", "c")) == claim("5")
    # The same version assumed again (another decision): a serial of its own, and the old undo is spent.
    second = claim("5", labels={"allocated": "b"})
    undo_second = state.assume(CLAIMS, second)
    assert state.assumption(CLAIMS, second) not in (None, serial)
    undo_first()
    assert state.get(CLAIMS, ("ns", "c")) is second
    state.wrote(CLAIMS, claim("6", labels={"allocated": "b"}))  # the write's answer replaces it
    undo_second()
    assert state.get(CLAIMS, ("ns", "c")) == claim("6", labels={"allocated": "b"})


def test_a_read_of_the_version_an_assumed_write_builds_on_leaves_the_assumption() -> None:
    """Seen in the chaos round (two claims on one device): decision A assumes a shared claim allocated and
    writes it; decision B's write of the same claim conflicts, and B's refresh reads the claim before A's
    write lands. That read must not drop A's assumption, or the next decision hands A's devices out again."""
    state, indexes = bound()
    indexes[CLAIMS][("ns", "c")] = [claim("5")]
    allocated = claim("5", labels={"allocated": "gpu-2"})
    undo = state.assume(CLAIMS, allocated)
    state.wrote(CLAIMS, claim("5"))  # the refresh: the version A's write is conditioned on
    assert state.get(CLAIMS, ("ns", "c")) is allocated, "A's write is still in flight"
    state.wrote(CLAIMS, claim("6", labels={"allocated": "gpu-2"}))  # A's answer, or a read that includes it
    undo()
    assert state.get(CLAIMS, ("ns", "c")) == claim("6", labels={"allocated": "gpu-2"})
    # A read past the version a write builds on (another writer came first): that write cannot land.
    undo_stale = state.assume(CLAIMS, claim("6", labels={"allocated": "gpu-3"}))
    state.wrote(CLAIMS, claim("7"))
    assert state.get(CLAIMS, ("ns", "c")) == claim("7")
    undo_stale()
    assert state.get(CLAIMS, ("ns", "c")) == claim("7")


def test_a_late_answer_to_our_write_does_not_bring_back_a_deleted_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, indexes = bound()
    indexes[CLAIMS][("ns", "c")] = [claim("5")]
    del indexes[CLAIMS][("ns", "c")]
    state.forget(CLAIMS, ("ns", "c"), claim("7"))  # the DELETED event, read before our write's answer
    state.wrote(CLAIMS, claim("6", labels={"late": "answer"}))
    assert state.get(CLAIMS, ("ns", "c")) is None and list(state.all(CLAIMS)) == []
    state.wrote(CLAIMS, claim("8", labels={"new": "object"}))  # created again under the same name
    assert state.get(CLAIMS, ("ns", "c")) == claim("8", labels={"new": "object"})
    # Remembered for GONE_SECONDS only: later deletions forget the old ends.
    clock = [1000.0]
    monkeypatch.setattr(state_module.time, "monotonic", lambda: clock[0])
    state.forget(CLAIMS, ("ns", "old"), claim("9"))
    clock[0] += state_module.GONE_SECONDS + 1
    state.forget(CLAIMS, ("ns", "new"), claim("10"))
    assert list(state._gone[CLAIMS]) == [("ns", "new")]


def test_the_gated_pods_are_found_without_a_pass_over_every_pod() -> None:
    state, indexes = bound()
    gate = {"schedulingGates": [{"name": names.SCHEDULING_GATE}]}

    def pod(name: str, namespace: str = "ns", gated: bool = True) -> Json:
        return {
            "metadata": {"name": name, "namespace": namespace, "uid": name},
            "spec": gate if gated else {},
        }

    for obj in (pod("a"), pod("b"), pod("c", namespace="other"), pod("free", gated=False)):
        state.note(PODS, obj)
        indexes[PODS][key_of(obj)] = [obj]
    early = pod("early")
    state.note(PODS, early)  # the index function ran; the index does not hold it yet
    assert sorted(p["metadata"]["name"] for p in state.gated_pods()) == ["a", "b", "c"]
    assert [p["metadata"]["name"] for p in state.gated_pods("other")] == ["c"]
    indexes[PODS][key_of(early)] = [early]
    assert "early" in {p["metadata"]["name"] for p in state.gated_pods()}, "not lost while it was unstored"
    state.wrote(PODS, {**pod("a", gated=False), "metadata": {**pod("a")["metadata"], "resourceVersion": "9"}})
    state.forget_pod(pod("b"))
    indexes[PODS].pop(("ns", "b"))
    assert sorted(p["metadata"]["name"] for p in state.gated_pods()) == ["c", "early"]
    assert state._gated == {("other", "c"), ("ns", "early")}, (
        "ungated and deleted Pods are not looked at again"
    )


def test_the_pods_on_a_node_are_found_without_a_pass_over_every_pod() -> None:
    """Bound (spec.nodeName) or pinned by the operator (its node annotation); a Pod that moved or went is not
    returned, and not looked at again."""
    state, indexes = bound()

    def pod(name: str, rv: str = "1", bound_to: str | None = None, pinned: str | None = None) -> Json:
        meta: Json = {"name": name, "namespace": "ns", "uid": name, "resourceVersion": rv}
        if pinned:
            meta["annotations"] = {names.NODE_ANNOTATION: pinned}
        return {"metadata": meta, "spec": {"nodeName": bound_to} if bound_to else {}}

    for obj in (pod("a", bound_to="n1"), pod("b", pinned="n1"), pod("c", bound_to="n2"), pod("nowhere")):
        state.note(PODS, obj)
        indexes[PODS][key_of(obj)] = [obj]
    assert sorted(p["metadata"]["name"] for p in state.pods_on("n1")) == ["a", "b"]
    assert [p["metadata"]["name"] for p in state.pods_on("n2")] == ["c"]
    assert state.pods_on("n3") == []
    state.wrote(PODS, pod("b", rv="2", pinned="n2"))  # our write pinned it elsewhere
    state.forget_pod(pod("a", bound_to="n1"))
    indexes[PODS].pop(("ns", "a"))
    assert state.pods_on("n1") == []
    assert sorted(p["metadata"]["name"] for p in state.pods_on("n2")) == ["b", "c"]
    assert "n1" not in state._on_node, "moved and deleted Pods are not kept, nor a node left with none"


def test_a_write_left_out_of_the_journal_is_read_but_moves_no_revision() -> None:
    """The free-devices status written on slices: no decision reads it, so it must not make the next
    decision gather every slice again (the reconciler keys that on the revision)."""
    state, indexes = bound()
    indexes[SLICES][("", "s")] = [{"metadata": {"name": "s", "resourceVersion": "5", "generation": 1}}]
    before = state.revision_of(SLICES)
    written = {"metadata": {"name": "s", "resourceVersion": "6", "generation": 1}, "status": {"free": 8}}
    state.wrote(SLICES, written, journal=False)
    assert state.revision_of(SLICES) == before
    assert state.get(SLICES, ("", "s")) == written, "read back (the next status pass compares against it)"


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


GPU_ANNOTATION = names.devices_annotation("gpu", None)


def full_pod() -> Json:
    """A Pod as the API server lists it after admission: every field the operator's decisions do not read
    filled in too."""
    manifest = {"resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "t"}], "devices": {}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u",
            "resourceVersion": "9",
            "labels": {"resource.dra-operator.io/managed": "true", "resource.dra-operator.io/gang": "g"},
            "annotations": {
                names.CLAIMS_ANNOTATION: json.dumps(manifest),
                names.devices_annotation("gpu", None): "d/n1/g0",
                "resource.dra-operator.io/gang-size": "2",
                "kubectl.kubernetes.io/last-applied-configuration": "{...the whole Pod again...}",
            },
            "ownerReferences": [{"kind": "Job", "name": "j", "uid": "j-uid", "controller": True}],
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:containers": {}}}}],
        },
        "spec": {
            "nodeSelector": {"zone": "a"},
            "affinity": {"podAntiAffinity": {}},
            "schedulingGates": [{"name": names.SCHEDULING_GATE}],
            "volumes": [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {}}]}}],
            "containers": [
                {
                    "name": "c",
                    "image": "registry/ml:1",
                    "command": ["train"],
                    "resources": {"limits": {names.DEVICE_PLUGIN_RESOURCE: "1"}},
                    "env": [
                        {
                            "name": "DRA_GPU_DEVICES",
                            "valueFrom": {
                                "fieldRef": {"fieldPath": f"metadata.annotations['{GPU_ANNOTATION}']"}
                            },
                        }
                    ],
                    "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets"}],
                    "livenessProbe": {"exec": {"command": ["true"]}},
                }
            ],
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready"}],
            "containerStatuses": [{"name": "c"}],
        },
    }


def test_a_slim_pod_decides_exactly_as_the_full_one() -> None:
    full = full_pod()
    kept = slim(PODS, full)
    node = {"metadata": {"name": "n1", "labels": {"zone": "a"}}, "spec": {}}
    for decide in (
        lambda p: pod_fits_node(p, node),
        lambda p: pod_patch(p, "n1", {"resource.dra-operator.io/devices-gpu": "d/n1/g0"}),
        lambda p: pod_claim_refs(p),
        lambda p: (is_gated(p), is_done(p), gang_of(p["metadata"])),
        lambda p: delivery_containers(p),
        lambda p: container_devices(p, "c"),
        lambda p: key_of(p),
    ):
        assert decide(kept) == decide(full)
    assert pod_claim_refs(full) and delivery_containers(full) == ["c"] and is_gated(full)
    assert container_devices(full, "c").devices, "the comparisons above compare something"
    assert "managedFields" not in kept["metadata"] and "volumes" not in kept["spec"]
    assert set(kept["spec"]["containers"][0]) == {"name", "resources", "env"}
    assert "kubectl.kubernetes.io/last-applied-configuration" not in kept["metadata"]["annotations"]
    assert "containerStatuses" not in kept["status"] and kept["status"]["phase"] == "Running"
    assert full == full_pod(), "the watched object itself is left alone"
    assert len(json.dumps(kept)) < len(json.dumps(full)) * 0.7


def test_objects_parsed_apart_hold_each_key_and_string_once_and_keep_their_values() -> None:
    first, second = (slim(PODS, json.loads(json.dumps(full_pod()))) for _ in range(2))
    assert first == second == slim(PODS, full_pod())

    def strings(obj: Any) -> list[str]:
        if isinstance(obj, dict):
            return [s for key, item in obj.items() for s in (key, *strings(item))]
        if isinstance(obj, list):
            return [s for item in obj for s in strings(item)]
        return [obj] if isinstance(obj, str) else []

    assert len(strings(first)) > 40
    assert all(a is b for a, b in zip(strings(first), strings(second), strict=True))


def test_other_kinds_lose_only_managed_fields_and_the_last_applied_copy() -> None:
    obj = claim("3", managedFields=[{"manager": "m"}], annotations={"a": "1", LAST_APPLIED: "{}"})
    obj["spec"] = {"devices": {"requests": []}}
    kept = slim(CLAIMS, obj)
    assert kept == {
        "metadata": {"name": "c", "namespace": "ns", "resourceVersion": "3", "annotations": {"a": "1"}},
        "spec": {"devices": {"requests": []}},
    }
    state, _ = bound()
    state.wrote(CLAIMS, obj)
    assert "managedFields" not in (state.get(CLAIMS, ("ns", "c")) or {})["metadata"], (
        "our writes are slimmed too"
    )


def test_a_cached_slice_holds_its_devices_once_as_the_parsed_models() -> None:
    from dra_operator.api.resource import ResourceSlice, load_object
    from dra_operator.controlplane.fakes import gpu_slice_manifest
    from dra_operator.operator.slices import CachedSlice, slice_models

    a, b = (gpu_slice_manifest(node, {"gpu-0": "64Gi"}) for node in ("node-a", "node-b"))
    slim_a, slim_b = slim(SLICES, a), slim(SLICES, b)
    assert isinstance(slim_a, CachedSlice) and isinstance(slim_b, CachedSlice)
    assert slim_a.model == load_object(a) and slice_models([slim_a, slim_b]) == [slim_a.model, slim_b.model]
    assert slim_a.model is not None and slim_a["spec"]["devices"] is slim_a.model.spec.devices  # one form
    assert slim_b.model is not None
    assert slim_a.model.spec.devices is not None and slim_b.model.spec.devices is not None
    assert slim_a.model.spec.devices[0].attributes is slim_b.model.spec.devices[0].attributes
    assert type(a["spec"]["devices"][0]) is dict  # the watched object is left as it was
    # A copy that lost the model (a plain dict) still parses to the same slice.
    copied = dict(slim_a)
    assert slice_models([copied]) == [slim_a.model] and ResourceSlice.model_validate(copied) == slim_a.model
    # The status (the free-devices view) stays JSON: it changes under an unchanged spec and model.
    counted = slim(SLICES, {**a, "status": {"devices": 1, "allocated": 0, "tainted": 0, "free": 1}})
    assert counted["status"]["free"] == 1 and counted.model is not None and counted.model.status is None
    # The caches hand the cached slice itself out, model and all.
    state, indexes = bound()
    indexes[SLICES][key_of(slim_a)] = [slim_a]
    assert state.get(SLICES, key_of(slim_a)) is slim_a and list(state.all(SLICES)) == [slim_a]


def test_an_invalid_slice_is_cached_as_sent_without_a_model() -> None:
    from dra_operator.controlplane.fakes import gpu_slice_manifest
    from dra_operator.operator.slices import CachedSlice, slice_models

    bad = gpu_slice_manifest("node-a", {"gpu-0": "64Gi", "GPU 1": "64Gi"})  # not a DNS label
    cached = slim(SLICES, bad)
    assert isinstance(cached, CachedSlice) and cached.model is None
    assert cached["spec"]["devices"] == bad["spec"]["devices"] and slice_models([cached, bad]) == []


def test_a_slice_whose_generation_is_unchanged_keeps_the_spec_held() -> None:
    from dra_operator.controlplane.fakes import gpu_slice_manifest

    def version(rv: str, generation: int, uid: str = "u1", status: Json | None = None) -> Json:
        obj = gpu_slice_manifest("node-a", {"gpu-0": "64Gi"}, name="s")
        obj["metadata"].update(resourceVersion=rv, generation=generation, uid=uid)
        return obj | ({"status": status} if status else {})

    held = slim(SLICES, version("1", 1))
    assert slim(SLICES, version("2", 1, status={"x": 1}), held)["spec"] is held["spec"]
    assert slim(SLICES, version("3", 2), held)["spec"] is not held["spec"]  # the spec changed
    assert (
        slim(SLICES, version("4", 1, uid="u2"), held)["spec"] is not held["spec"]
    )  # another slice, same name
    assert slim(SLICES, version("5", 0), held | {"metadata": {"generation": 0}})["spec"] is not held["spec"]

    # Our status write's answer (the pool-status pass) keeps the indexed spec too.
    state, indexes = bound()
    indexes[SLICES][("", "s")] = [held]
    state.wrote(SLICES, version("2", 1, status={"x": 1}), journal=False)
    written = state.get(SLICES, ("", "s"))
    assert written is not None and written["status"] == {"x": 1} and written["spec"] is held["spec"]


def test_claims_with_equal_specs_share_one() -> None:
    def user_claim(name: str) -> Json:
        return {
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1"},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu"}}]}},
            "status": {"state": "pending"},
        }

    a, b = slim(CLAIMS, user_claim("a")), slim(CLAIMS, user_claim("b"))
    assert a["spec"] is b["spec"] and a["spec"] == user_claim("a")["spec"]
    # A waiting claim's status is shared too (many claims repeat it), read-only; its copies are plain.
    assert a["status"] is b["status"]
    with pytest.raises(TypeError, match="read-only"):
        a["status"]["state"] = "allocated"
    allocated = user_claim("c") | {"status": {"state": "allocated", "allocation": {"devices": {}}}}
    assert slim(CLAIMS, allocated)["status"] is not slim(CLAIMS, allocated)["status"]
    # How the reconciler writes: a deep copy (the shared spec stays one object), its status and metadata
    # changed, never its spec (immutable in Kubernetes).
    import copy

    written = copy.deepcopy(a)
    written["status"]["state"] = "allocated"
    written["metadata"]["finalizers"] = ["x"]
    assert (
        written["spec"] is a["spec"]
        and a["status"] == {"state": "pending"}
        and "finalizers" not in a["metadata"]
    )
