"""The per-Pod / per-claim flow of the reconciler against an in-memory API server and a scripted allocator."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
from collections import Counter
from typing import Any

import jsonpatch
import pytest

from dra_operator.admission import names
from dra_operator.admission.mutation import mutate
from dra_operator.kube.client import KubeError, resource_of
from dra_operator.operator.allocating import AllocationRequest, Failure, Placed
from dra_operator.operator.placement import generated_claim
from dra_operator.operator.reconciler import Reconciler
from dra_operator.operator.state import CLAIMS, CLASSES, INDEXES, NODES, PODS, TEMPLATES, State, key_of

Json = dict[str, Any]
NS = "ns"


class FakeKube:
    """Objects by REST path; resourceVersion preconditions, JSON-patch tests, finalizers, generateName."""

    def __init__(self) -> None:
        self.objects: dict[str, Json] = {}
        self.writes: Counter[tuple[str, str]] = Counter()
        self.rv = itertools.count(100)
        self.names = itertools.count()

    def _bump(self, obj: Json) -> Json:
        obj["metadata"]["resourceVersion"] = str(next(self.rv))
        return copy.deepcopy(obj)

    def put(self, path: str, obj: Json) -> Json:
        obj = copy.deepcopy(obj)
        obj["metadata"].setdefault("uid", f"uid-{next(self.names)}")
        self.objects[path] = obj
        return self._bump(obj)

    async def get(self, path: str) -> Json | None:
        return copy.deepcopy(self.objects.get(path))

    async def create(self, path: str, body: Json) -> Json:
        await asyncio.sleep(0)  # let other workers run in between, as a real API call does
        self.writes[("POST", resource_of(path))] += 1
        body = copy.deepcopy(body)
        if "generateName" in body["metadata"]:
            body["metadata"]["name"] = body["metadata"]["generateName"] + f"x{next(self.names)}"
        return self.put(f"{path}/{body['metadata']['name']}", body)

    async def replace(self, path: str, body: Json) -> Json:
        await asyncio.sleep(0)  # let other workers run in between, as a real API call does
        self.writes[("PUT", resource_of(path))] += 1
        base = path.removesuffix("/status")
        current = self.objects[base]
        if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]:
            raise KubeError(409, "Conflict")
        if path.endswith("/status"):
            current["status"] = copy.deepcopy(body.get("status"))
        else:
            self.objects[base] = current = copy.deepcopy(body)
        return self._bump(current)

    async def json_patch(self, path: str, ops: list[Json]) -> Json:
        await asyncio.sleep(0)  # let other workers run in between, as a real API call does
        self.writes[("PATCH", resource_of(path))] += 1
        current = self.objects[path]
        try:
            patched = jsonpatch.apply_patch(current, ops)
        except jsonpatch.JsonPatchTestFailed:
            raise KubeError(422, "test failed") from None
        self.objects[path] = patched
        result = self._bump(patched)
        if patched["metadata"].get("deletionTimestamp") and not patched["metadata"].get("finalizers"):
            del self.objects[path]
        return result

    async def delete(self, path: str, preconditions: Json | None = None) -> Json | None:
        await asyncio.sleep(0)  # let other workers run in between, as a real API call does
        self.writes[("DELETE", resource_of(path))] += 1
        current = self.objects.get(path)
        if current is None:
            return None
        if current["metadata"].get("finalizers"):
            current["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            return self._bump(current)
        del self.objects[path]
        return current

    async def request(self, method: str, path: str, query: Any = None) -> Json:
        assert method == "GET"
        plural = path.rstrip("/").rsplit("/", 1)[-1]
        return {"items": copy.deepcopy(self.of(plural))}

    def of(self, plural: str) -> list[Json]:
        return [o for p, o in self.objects.items() if f"/{plural}/" in p]


class FakeRecorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str]] = []

    def record(self, obj: Json, type_: str, reason: str, message: str) -> None:
        self.events.append((obj["metadata"]["name"], type_, reason, message))

    def normal(self, obj: Json, reason: str, message: str) -> None:
        self.record(obj, "Normal", reason, message)

    def warning(self, obj: Json, reason: str, message: str) -> None:
        self.record(obj, "Warning", reason, message)

    def forget(self, uid: str) -> None:
        pass

    def reasons(self, name: str) -> list[str]:
        return [e[2] for e in self.events if e[0] == name]


class ScriptedAllocator:
    """Gives each unallocated claim the next free device of node n1 (two devices), or fails."""

    def __init__(self) -> None:
        self.calls = 0

    def allocate(self, req: AllocationRequest) -> Placed | Failure:
        self.calls += 1
        used = {
            r["device"]
            for c in req.claims_in_use()
            for r in ((c.get("status") or {}).get("allocation") or {}).get("devices", {}).get("results", [])
        }
        free = [d for d in ("gpu-0", "gpu-1") if d not in used]
        allocations = {}
        for pod_claim, claim in req.claims.items():
            if (claim.get("status") or {}).get("allocation"):
                continue
            if not free:
                return Failure("AllocationFailed", "node n1: all devices in use")
            device = free.pop(0)
            allocations[pod_claim] = {
                "devices": {
                    "results": [{"request": "gpu", "driver": "d.example.com", "pool": "n1", "device": device}]
                },
                "nodeSelector": {
                    "nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
                    ]
                },
            }
        return Placed(node="n1", allocations=allocations)


class Index(dict[Any, list[Json]]):
    """A stand-in for a Kopf index: key -> collection of values."""


def claims_path(name: str = "") -> str:
    return f"/apis/resource.dra-operator.io/v1/namespaces/{NS}/resourceclaims" + (f"/{name}" if name else "")


def pods_path(name: str) -> str:
    return f"/api/v1/namespaces/{NS}/pods/{name}"


class World:
    def __init__(self) -> None:
        self.kube = FakeKube()
        self.state = State()
        self.recorder = FakeRecorder()
        self.allocator = ScriptedAllocator()
        self.reconciler = Reconciler(self.kube, self.state, self.recorder, self.allocator)  # type: ignore[arg-type]
        self.kube.put(
            "/api/v1/nodes/n1", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {}}}
        )
        self.kube.put(
            "/apis/resource.dra-operator.io/v1/deviceclasses/c",
            {"apiVersion": "resource.dra-operator.io/v1", "kind": "DeviceClass", "metadata": {"name": "c"}},
        )
        self.sync()

    def sync(self) -> None:
        """Play the watch: indexes reflect the fake API server."""
        indexes = {name: Index() for name in INDEXES}
        kinds = {
            "/pods/": PODS,
            "/resourceclaims/": CLAIMS,
            "/resourceclaimtemplates/": TEMPLATES,
            "/nodes/": NODES,
            "/deviceclasses/": CLASSES,
        }
        for path, obj in self.kube.objects.items():
            for marker, kind in kinds.items():
                if marker in path:
                    indexes[kind][key_of(obj)] = [copy.deepcopy(obj)]
        if self.state.indexes is None:
            self.state.bind(indexes)
        else:
            for name in INDEXES:
                self.state.indexes[name].clear()  # type: ignore[attr-defined]
                self.state.indexes[name].update(indexes[name])  # type: ignore[attr-defined]
            self.state.reindex()  # what the index functions' note() calls do, event by event

    def add_pod(self, name: str, refs: list[Json], delivery_resource: str | None = None) -> Json:
        raw = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {
                "containers": [{"name": "c", "resources": {"claims": [{"name": r["name"]} for r in refs]}}],
                "resourceClaims": refs,
            },
        }
        obj = self.kube.put(pods_path(name), mutate(raw, "Pod", delivery_resource=delivery_resource).obj)
        self.sync()
        return obj

    def add(self, path: str, obj: Json) -> None:
        obj.setdefault("metadata", {}).setdefault("namespace", NS)
        self.kube.put(path, obj)
        self.sync()

    def run(self, coro: Any) -> None:
        asyncio.run(coro)
        self.sync()

    def drain(self, pods: list[str], rounds: int = 1, kind: str = "pod") -> None:
        """Run the workers until nothing is queued, each Pod's item (or claim's, by `kind`) enqueued
        `rounds` times (as repeated watch events would, also while it is in progress)."""

        async def scenario() -> None:
            runner = asyncio.create_task(self.reconciler.run())
            for _ in range(rounds):
                for name in pods:
                    self.reconciler.enqueue(kind, NS, name)
                await asyncio.sleep(0)
            while self.reconciler.work.busy():  # noqa: ASYNC110 - drain the fake
                await asyncio.sleep(0)
            runner.cancel()

        asyncio.run(scenario())
        self.sync()

    def pod(self, name: str) -> Json:
        return self.kube.objects[pods_path(name)]

    def finish(self, name: str) -> None:
        self.kube.objects[pods_path(name)]["status"] = {"phase": "Succeeded"}
        self.kube._bump(self.kube.objects[pods_path(name)])
        self.sync()


TEMPLATE = {
    "apiVersion": "resource.dra-operator.io/v1",
    "kind": "ResourceClaimTemplate",
    "metadata": {"name": "tmpl"},
    "spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "c"}}]}}},
}
CLAIM = {
    "apiVersion": "resource.dra-operator.io/v1",
    "kind": "ResourceClaim",
    "metadata": {"name": "shared"},
    "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "c"}}]}},
}


def gated(pod: Json) -> bool:
    return any(g["name"] == names.SCHEDULING_GATE for g in pod["spec"].get("schedulingGates") or [])


def test_template_pod_costs_three_writes_and_is_ungated_on_the_node() -> None:
    w = World()
    w.add(
        f"/apis/resource.dra-operator.io/v1/namespaces/{NS}/resourceclaimtemplates/tmpl",
        copy.deepcopy(TEMPLATE),
    )
    w.add_pod("p", [{"name": "gpu", "resourceClaimTemplateName": "tmpl"}])
    w.kube.writes.clear()
    w.run(w.reconciler.sync_pod(NS, "p"))
    assert sorted(w.kube.writes.items()) == [
        (("PATCH", "pods"), 1),
        (("POST", "resourceclaims"), 1),
        (("PUT", "resourceclaims/status"), 1),
    ]
    (claim,) = w.kube.of("resourceclaims")
    assert claim["metadata"]["generateName"] == "p-gpu-"
    assert claim["metadata"]["finalizers"] == [names.CLAIM_FINALIZER]
    assert claim["metadata"]["ownerReferences"][0]["uid"] == w.pod("p")["metadata"]["uid"]
    assert claim["status"]["reservedFor"][0]["name"] == "p"
    assert claim["status"]["state"] == "allocated,reserved" and claim["status"]["nodeName"] == "n1"
    pod = w.pod("p")
    assert not gated(pod)
    assert pod["metadata"]["annotations"][names.devices_annotation("gpu", None)] == "d.example.com/n1/gpu-0"
    assert pod["metadata"]["annotations"][names.nvidia_annotation("c")] == names.NVIDIA_NONE
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["n1"]
    assert w.recorder.reasons("p") == ["Allocated"]  # with the scheduler's Scheduled: two events per Pod
    assert w.recorder.reasons(claim["metadata"]["name"]) == [], "the Pod's event names its own claim"
    assert "(from template tmpl)" in next(e[3] for e in w.recorder.events if e[0] == "p")

    # Again: nothing to do (idempotent), no write.
    w.kube.writes.clear()
    w.run(w.reconciler.sync_pod(NS, "p"))
    assert not w.kube.writes

    # The Pod ends: its generated claim loses the finalizer and is deleted.
    w.finish("p")
    w.run(w.reconciler.releaser.sync(NS, claim["metadata"]["name"]))
    assert w.kube.of("resourceclaims") == []


@pytest.mark.parametrize("status", [None, {"state": "pending"}], ids=["as stored", "as read, defaulted"])
def test_a_users_claim_that_no_pod_uses_costs_no_write(status: Json | None) -> None:
    """Nothing to allocate, nothing to say: the CRD's status default shows it pending (api.crdgen)."""
    w = World()
    claim = copy.deepcopy(CLAIM)
    if status is not None:
        claim["status"] = status
    w.add(claims_path("shared"), claim)
    w.kube.writes.clear()
    w.run(w.reconciler.releaser.sync(NS, "shared"))
    assert not w.kube.writes
    assert not w.recorder.events


def test_shared_claim_is_reused_then_deallocated_when_the_last_consumer_ends() -> None:
    w = World()
    w.add(claims_path("shared"), copy.deepcopy(CLAIM))
    for name in ("a", "b"):
        w.add_pod(name, [{"name": "s", "resourceClaimName": "shared"}])
        w.run(w.reconciler.sync_pod(NS, name))
    claim = w.kube.objects[claims_path("shared")]
    assert [r["name"] for r in claim["status"]["reservedFor"]] == ["a", "b"]
    assert w.allocator.calls == 2
    assert all(not gated(w.pod(n)) for n in ("a", "b"))
    w.finish("a")
    w.run(w.reconciler.releaser.sync(NS, "shared"))
    claim = w.kube.objects[claims_path("shared")]
    assert [r["name"] for r in claim["status"]["reservedFor"]] == ["b"]
    assert claim["status"]["allocation"]
    w.finish("b")
    w.run(w.reconciler.releaser.sync(NS, "shared"))
    claim = w.kube.objects[claims_path("shared")]
    assert "allocation" not in claim["status"] and claim["status"]["state"] == "pending"
    assert names.CLAIM_FINALIZER not in (claim["metadata"].get("finalizers") or [])
    assert "Deallocated" in w.recorder.reasons("shared")


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ({"name": "gpu", "resourceClaimTemplateName": "missing"}, "TemplateNotFound"),
        ({"name": "gpu", "resourceClaimName": "missing"}, "ClaimNotFound"),
    ],
)
def test_missing_objects_leave_the_pod_gated_with_a_warning(ref: Json, reason: str) -> None:
    w = World()
    w.add_pod("p", [ref])
    w.kube.writes.clear()
    w.run(w.reconciler.sync_pod(NS, "p"))
    assert not w.kube.writes and gated(w.pod("p"))
    assert w.recorder.reasons("p") == [reason]
    assert w.recorder.events[0][1] == "Warning"


def test_missing_class_is_reported_before_allocating() -> None:
    w = World()
    template = copy.deepcopy(TEMPLATE)
    template["spec"]["spec"]["devices"]["requests"][0]["exactly"]["deviceClassName"] = "nope"
    w.add(f"/apis/resource.dra-operator.io/v1/namespaces/{NS}/resourceclaimtemplates/tmpl", template)
    w.add_pod("p", [{"name": "gpu", "resourceClaimTemplateName": "tmpl"}])
    w.run(w.reconciler.sync_pod(NS, "p"))
    assert gated(w.pod("p")) and w.allocator.calls == 0
    assert w.recorder.reasons("p") == ["ClassNotFound"]
    assert "device class nope does not exist" in w.recorder.events[-1][3]


def test_no_device_left_keeps_the_pod_gated_and_explains() -> None:
    w = World()
    w.add(
        f"/apis/resource.dra-operator.io/v1/namespaces/{NS}/resourceclaimtemplates/tmpl",
        copy.deepcopy(TEMPLATE),
    )
    for name in ("p1", "p2", "p3"):
        w.add_pod(name, [{"name": "gpu", "resourceClaimTemplateName": "tmpl"}])
        w.run(w.reconciler.sync_pod(NS, name))
    assert [gated(w.pod(n)) for n in ("p1", "p2", "p3")] == [False, False, True]
    assert "AllocationFailed" in w.recorder.reasons("p3")
    devices = [
        r["device"]
        for c in w.kube.of("resourceclaims")
        for r in ((c.get("status") or {}).get("allocation") or {}).get("devices", {}).get("results", [])
    ]
    assert sorted(devices) == ["gpu-0", "gpu-1"]
    # p1 ends: its device frees up and p3 proceeds; p3's claim made earlier is reused, not created twice.
    w.finish("p1")
    (p1_claim,) = [
        c
        for c in w.kube.of("resourceclaims")
        if [r["name"] for r in (c.get("status") or {}).get("reservedFor") or []] == ["p1"]
    ]
    w.run(w.reconciler.releaser.sync(NS, p1_claim["metadata"]["name"]))
    w.run(w.reconciler.sync_pod(NS, "p3"))
    assert not gated(w.pod("p3"))
    assert len(w.kube.of("resourceclaims")) == 2


def template_pod_world(name: str) -> World:
    """A World with the template `tmpl` and one Pod, `name`, whose claim `gpu` comes from it."""
    w = World()
    w.add(
        f"/apis/resource.dra-operator.io/v1/namespaces/{NS}/resourceclaimtemplates/tmpl",
        copy.deepcopy(TEMPLATE),
    )
    w.add_pod(name, [{"name": "gpu", "resourceClaimTemplateName": "tmpl"}])
    return w


def add_generated(w: World, pod: str, name: str, created: str, status: Json | None = None) -> None:
    """A claim generated for `pod`'s claim `gpu` from `tmpl`, as a create would have left it."""
    claim = generated_claim(w.pod(pod), "gpu", TEMPLATE)
    claim["metadata"]["name"] = name
    claim["metadata"]["creationTimestamp"] = created
    if status is not None:
        claim["status"] = status
    w.add(claims_path(name), claim)


def test_of_two_claims_generated_for_one_pod_claim_the_oldest_is_used_and_the_other_deleted() -> None:
    """Two claims for one Pod claim (a create that landed without an answer, then its retry): one is used,
    the same on every pass, and the other deleted before the Pod is placed."""
    w = template_pod_world("p")
    add_generated(w, "p", "p-gpu-late", "2026-01-01T00:00:09Z")
    add_generated(w, "p", "p-gpu-early", "2026-01-01T00:00:01Z")
    w.kube.writes.clear()
    w.run(w.reconciler.sync_pod(NS, "p"))
    assert not gated(w.pod("p"))
    (claim,) = w.kube.of("resourceclaims")
    assert claim["metadata"]["name"] == "p-gpu-early"
    assert claim["status"]["reservedFor"][0]["name"] == "p"
    assert w.allocator.calls == 1
    assert w.kube.writes[("POST", "resourceclaims")] == 0, "no third claim"


def test_a_duplicate_never_replaces_the_claim_already_allocated_for_the_pod() -> None:
    """A restart between the reservation and the ungating, with a duplicate beside the reserved claim: the
    reserved one is kept, not allocated again, and the duplicate goes (the older of the two, here)."""
    w = template_pod_world("p")
    add_generated(w, "p", "p-gpu-early", "2026-01-01T00:00:01Z")
    uid = w.pod("p")["metadata"]["uid"]
    reserved = {
        "allocation": {
            "devices": {
                "results": [{"request": "gpu", "driver": "d.example.com", "pool": "n1", "device": "gpu-1"}]
            },
            "nodeSelector": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
                ]
            },
        },
        "reservedFor": [{"resource": "pods", "name": "p", "uid": uid}],
    }
    add_generated(w, "p", "p-gpu-late", "2026-01-01T00:00:09Z", status=reserved)
    w.run(w.reconciler.sync_pod(NS, "p"))
    assert not gated(w.pod("p"))
    (claim,) = w.kube.of("resourceclaims")
    assert claim["metadata"]["name"] == "p-gpu-late"
    assert claim["status"]["allocation"] == reserved["allocation"], "asked again, but reused as it was"
    assert (
        w.pod("p")["metadata"]["annotations"][names.devices_annotation("gpu", None)]
        == "d.example.com/n1/gpu-1"
    )


def test_a_lost_create_answer_leaves_no_second_claim_once_the_pod_is_placed() -> None:
    """The create lands but its answer is lost (a 504); the retry comes before the watch shows the first
    claim, so it creates a second and the Pod is placed with it. The first, seen afterwards, is deleted."""
    w = template_pod_world("p")
    create = w.kube.create

    async def lost_answer(path: str, body: Json) -> Json:
        await create(path, body)
        raise KubeError(504, "Timeout: request did not complete within the allotted timeout")

    w.kube.create = lost_answer  # type: ignore[method-assign]
    with pytest.raises(KubeError):
        asyncio.run(w.reconciler.sync_pod(NS, "p"))
    w.kube.create = create  # type: ignore[method-assign]
    asyncio.run(w.reconciler.sync_pod(NS, "p"))  # the watch has not shown the first claim yet
    assert not gated(w.pod("p"))
    assert len(w.kube.of("resourceclaims")) == 2
    w.sync()
    for claim in w.kube.of("resourceclaims"):
        w.run(w.reconciler.releaser.sync(NS, claim["metadata"]["name"]))
    (claim,) = w.kube.of("resourceclaims")
    assert claim["status"]["reservedFor"][0]["name"] == "p"
    assert w.allocator.calls == 1


def test_a_duplicate_synced_before_its_sibling_was_reserved_goes_once_the_sibling_is() -> None:
    """The window the two tests above leave: the duplicate's own sync comes while neither claim is reserved
    (so it is no duplicate yet to that sync), and the Pod is then placed with the other one. The reserved
    claim's sync queues the duplicate again, and it is deleted, long before the Pod ends."""
    w = template_pod_world("p")
    add_generated(w, "p", "p-gpu-kept", "2026-01-01T00:00:01Z")
    add_generated(w, "p", "p-gpu-stray", "2026-01-01T00:00:09Z")
    w.run(w.reconciler.releaser.sync(NS, "p-gpu-stray"))
    assert len(w.kube.of("resourceclaims")) == 2, "nothing reserved yet: its sync cannot tell"
    kept = w.kube.objects[claims_path("p-gpu-kept")]
    kept["status"] = {
        "allocation": allocation_on("n1", "gpu-1"),
        "reservedFor": [{"resource": "pods", "name": "p", "uid": w.pod("p")["metadata"]["uid"]}],
    }
    w.kube._bump(kept)
    w.sync()
    w.kube.writes.clear()
    w.drain(["p-gpu-kept"], kind="claim")
    (claim,) = w.kube.of("resourceclaims")
    assert claim["metadata"]["name"] == "p-gpu-kept"
    assert claim["status"]["reservedFor"][0]["name"] == "p"
    assert w.kube.writes[("DELETE", "resourceclaims")] == 1
    assert w.kube.writes[("PUT", "resourceclaims")] == 0, "the kept claim is not written"


def test_restart_between_claim_write_and_pod_patch_resumes_without_reallocating() -> None:
    w = template_pod_world("p")
    original = w.kube.json_patch

    async def crash(path: str, ops: list[Json]) -> Json:
        if "/pods/" in path:
            raise RuntimeError("killed")
        return await original(path, ops)

    w.kube.json_patch = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        w.run(w.reconciler.sync_pod(NS, "p"))
    w.sync()
    w.kube.json_patch = original  # type: ignore[method-assign]
    fresh = World.__new__(World)
    fresh.kube, fresh.recorder, fresh.allocator = w.kube, FakeRecorder(), w.allocator
    fresh.state = State()
    fresh.reconciler = Reconciler(fresh.kube, fresh.state, fresh.recorder, fresh.allocator)  # type: ignore[arg-type]
    fresh.sync()
    calls = w.allocator.calls
    fresh.run(fresh.reconciler.sync_pod(NS, "p"))
    assert not gated(fresh.pod("p"))
    assert len(w.kube.of("resourceclaims")) == 1
    assert w.allocator.calls == calls + 1  # asked again, but the claim was already allocated: reused
    assert json.dumps(w.kube.of("resourceclaims")[0]["status"]["reservedFor"]).count('"uid"') == 1


def test_concurrent_workers_never_double_allocate_nor_create_twice() -> None:
    w = World()
    w.add(
        f"/apis/resource.dra-operator.io/v1/namespaces/{NS}/resourceclaimtemplates/tmpl",
        copy.deepcopy(TEMPLATE),
    )
    names_ = [f"p{i}" for i in range(8)]
    for name in names_:
        w.add_pod(name, [{"name": "gpu", "resourceClaimTemplateName": "tmpl"}])
    w.reconciler.workers = 4

    w.drain(names_, rounds=3)  # the same Pods enqueued again while in progress, as watch events do
    claims = w.kube.of("resourceclaims")
    owners = [c["metadata"]["ownerReferences"][0]["name"] for c in claims]
    assert sorted(owners) == sorted(names_), "one generated claim per Pod"
    devices = [
        r["device"]
        for c in claims
        for r in ((c.get("status") or {}).get("allocation") or {}).get("devices", {}).get("results", [])
    ]
    assert sorted(devices) == ["gpu-0", "gpu-1"]
    assert sum(not gated(w.pod(n)) for n in names_) == 2


def test_pod_bound_at_creation_gets_a_warning_not_an_allocation() -> None:
    w = World()
    raw = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bound", "namespace": NS},
        "spec": {
            "nodeName": "n1",
            "containers": [{"name": "c", "resources": {"claims": [{"name": "g"}]}}],
            "resourceClaims": [{"name": "g", "resourceClaimName": "shared"}],
        },
    }
    w.kube.put(pods_path("bound"), mutate(raw, "Pod").obj)
    w.sync()
    w.run(w.reconciler.sync_pod(NS, "bound"))
    assert w.recorder.reasons("bound") == ["NotGated"] and w.allocator.calls == 0


class NodeAwareAllocator:
    """Places the Pod on the node its allocated claims share (n1 if none), giving each unallocated claim a
    free device there; fails when they are on different nodes or the node is full, like the real one."""

    def __init__(self, devices: dict[str, list[str]]) -> None:
        self.devices = devices
        self.calls = 0

    def allocate(self, req: AllocationRequest) -> Placed | Failure:
        self.calls += 1
        nodes = {
            (c.get("status") or {}).get("nodeName")
            for c in req.claims.values()
            if (c.get("status") or {}).get("allocation")
        }
        if len(nodes) > 1:
            return Failure("AllocationFailed", f"claims allocated on different nodes: {sorted(nodes)}")
        node = next(iter(nodes), None) or "n1"
        used = {
            r["device"]
            for c in req.claims_in_use()
            for r in ((c.get("status") or {}).get("allocation") or {}).get("devices", {}).get("results", [])
        }
        free = [d for d in self.devices[node] if d not in used]
        allocations = {}
        for pod_claim, claim in req.claims.items():
            if (claim.get("status") or {}).get("allocation"):
                continue
            if not free:
                return Failure("AllocationFailed", f"node {node}: all devices in use")
            allocations[pod_claim] = allocation_on(node, free.pop(0))
        return Placed(node=node, allocations=allocations)


def allocation_on(node: str, device: str) -> Json:
    return {
        "devices": {
            "results": [{"request": "gpu", "driver": "d.example.com", "pool": node, "device": device}]
        },
        "nodeSelector": {
            "nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
            ]
        },
    }


def test_claims_of_an_unplaceable_pod_are_withdrawn_and_it_is_placed_on_the_next_try() -> None:
    """The state a failed write or a leader change can leave (issue 10): Pod p's template claim allocated on
    n2 and reserved for p alone, its shared claim allocated on n1 for a running Pod q. p cannot run on both
    nodes; its reservation is withdrawn, the template claim deallocated, and the next try puts both on n1.
    The shared claim keeps q."""
    w = World()
    w.allocator = NodeAwareAllocator({"n1": ["gpu-0", "gpu-1"], "n2": ["gpu-9"]})  # type: ignore[assignment]
    w.reconciler.allocator = w.allocator  # type: ignore[assignment]
    w.add(
        f"/apis/resource.dra-operator.io/v1/namespaces/{NS}/resourceclaimtemplates/tmpl",
        copy.deepcopy(TEMPLATE),
    )
    w.add(claims_path("shared"), copy.deepcopy(CLAIM))
    w.add_pod("q", [{"name": "s", "resourceClaimName": "shared"}])
    w.run(w.reconciler.sync_pod(NS, "q"))
    assert not gated(w.pod("q"))

    p = w.add_pod(
        "p",
        [{"name": "gpu", "resourceClaimTemplateName": "tmpl"}, {"name": "s", "resourceClaimName": "shared"}],
    )
    template = w.kube.objects[
        f"/apis/resource.dra-operator.io/v1/namespaces/{NS}/resourceclaimtemplates/tmpl"
    ]
    made = asyncio.run(w.kube.create(claims_path(), generated_claim(p, "gpu", template)))
    stray = w.kube.objects[claims_path(made["metadata"]["name"])]
    stray["metadata"]["finalizers"] = [names.CLAIM_FINALIZER]
    stray["status"] = {
        "allocation": allocation_on("n2", "gpu-9"),
        "nodeName": "n2",
        "reservedFor": [{"resource": "pods", "name": "p", "uid": p["metadata"]["uid"]}],
    }
    w.kube._bump(stray)
    w.sync()

    w.run(w.reconciler.sync_pod(NS, "p"))  # fails, withdraws, and queues p again
    assert gated(w.pod("p"))
    withdrawn = w.kube.objects[claims_path(made["metadata"]["name"])]
    assert "allocation" not in withdrawn["status"] and not withdrawn["status"].get("reservedFor")
    assert ("pod", NS, "p") in w.reconciler.work.queued
    assert [r["name"] for r in w.kube.objects[claims_path("shared")]["status"]["reservedFor"]] == ["q"]
    assert "Deallocated" in w.recorder.reasons(made["metadata"]["name"])

    w.run(w.reconciler.sync_pod(NS, "p"))
    assert not gated(w.pod("p"))
    placed = w.kube.objects[claims_path(made["metadata"]["name"])]
    assert placed["status"]["nodeName"] == "n1"
    assert placed["status"]["allocation"]["devices"]["results"][0]["device"] == "gpu-1"
    assert [r["name"] for r in w.kube.objects[claims_path("shared")]["status"]["reservedFor"]] == ["q", "p"]


def test_a_release_waits_for_an_allocation_decision_in_flight() -> None:
    """Releases take the decision lock: a claim is never deallocated between a Pod's decision and its
    reservation (issue 10's 409 after a release in between)."""
    w = World()
    w.add(claims_path("shared"), copy.deepcopy(CLAIM))
    w.add_pod("a", [{"name": "s", "resourceClaimName": "shared"}])
    w.run(w.reconciler.sync_pod(NS, "a"))
    w.finish("a")

    async def scenario() -> list[str]:
        order: list[str] = []
        async with w.reconciler._decide:
            release = asyncio.create_task(w.reconciler.releaser.sync(NS, "shared"))
            for _ in range(5):
                await asyncio.sleep(0)
            order.append("decision" if not release.done() else "release")
        await release
        order.append("release")
        return order

    assert asyncio.run(scenario()) == ["decision", "release"]
    w.sync()
    assert "allocation" not in w.kube.objects[claims_path("shared")]["status"]


def test_ended_pods_claims_are_deleted_outside_the_decision_lock() -> None:
    """The clean-up of many Pods' claims overlaps (issue 14: under the lock it ran one write at a time), and
    the devices of a claim being deleted stay in use until it is gone."""
    w = World()
    w.add(
        f"/apis/resource.dra-operator.io/v1/namespaces/{NS}/resourceclaimtemplates/tmpl",
        copy.deepcopy(TEMPLATE),
    )
    for name in ("a", "b"):
        w.add_pod(name, [{"name": "gpu", "resourceClaimTemplateName": "tmpl"}])
        w.run(w.reconciler.sync_pod(NS, name))
        w.finish(name)
    claims = [c["metadata"]["name"] for c in w.kube.of("resourceclaims")]
    assert len(claims) == 2
    lock = w.reconciler._decide
    locked_at_write: list[bool] = []
    in_flight: list[str] = []
    both_in_flight = asyncio.Event()
    drop = w.kube.json_patch

    async def slow_drop(path: str, ops: list[Json]) -> Json:
        locked_at_write.append(lock.locked())
        in_flight.append(path)
        if len(in_flight) == 2:
            both_in_flight.set()
        await asyncio.wait_for(both_in_flight.wait(), 5)
        # Meanwhile the claim is still in use for decisions: nothing released it yet.
        assert w.state.get(CLAIMS, (NS, path.rsplit("/", 1)[-1])) is not None
        return await drop(path, ops)

    w.kube.json_patch = slow_drop  # type: ignore[method-assign]

    async def scenario() -> None:
        await asyncio.gather(*(w.reconciler.releaser.sync(NS, name) for name in claims))

    w.run(scenario())
    assert locked_at_write == [False, False]
    assert w.kube.of("resourceclaims") == []


def test_a_pod_deleted_while_its_ungating_is_answered_stays_gone() -> None:
    """The watch's DELETED event of a Pod can be read before the answer to our ungating PATCH of it. That
    answer must not bring the Pod back into the cache, where it would look alive and hold its claim for good
    (a CI run saw a deleted Pod's claim never released)."""
    w = template_pod_world("a")
    patch = w.kube.json_patch

    async def deleted_before_the_answer_is_read(path: str, ops: list[Json]) -> Json:
        answer = await patch(path, ops)
        if "/pods/" in path:
            gone = w.kube.objects.pop(path)
            w.sync()  # the watch: the Pod is gone, at a resourceVersion past the PATCH's
            rv = str(int(answer["metadata"]["resourceVersion"]) + 1)
            last = {**gone, "metadata": {**gone["metadata"], "resourceVersion": rv}}
            w.state.forget(PODS, key_of(gone), last)
        return answer

    w.kube.json_patch = deleted_before_the_answer_is_read  # type: ignore[method-assign]
    w.run(w.reconciler.sync_pod(NS, "a"))
    assert w.state.get(PODS, (NS, "a")) is None, "the late answer brought the deleted Pod back"
    w.kube.json_patch = patch  # type: ignore[method-assign]
    (claim,) = w.kube.of("resourceclaims")
    w.run(w.reconciler.releaser.sync(NS, claim["metadata"]["name"]))
    assert w.kube.of("resourceclaims") == [], "the deleted Pod's claim is released"


def test_a_pod_ungated_by_hand_before_allocation_is_deleted_and_told_why() -> None:
    """Where the chart's admission policy is not installed, someone may remove the gate before allocation:
    the Pod would run without devices. The event says what happened (not "nodeName at creation") and the Pod
    is deleted."""
    w = World()
    w.add(
        f"/apis/resource.dra-operator.io/v1/namespaces/{NS}/resourceclaimtemplates/tmpl",
        copy.deepcopy(TEMPLATE),
    )
    w.add_pod("p", [{"name": "gpu", "resourceClaimTemplateName": "tmpl"}])
    pod = w.kube.objects[pods_path("p")]
    pod["spec"]["schedulingGates"] = []
    pod["spec"]["nodeName"] = "n1"  # kube-scheduler bound it at once
    w.kube._bump(pod)
    w.sync()
    w.run(w.reconciler.sync_pod(NS, "p"))
    assert pods_path("p") not in w.kube.objects
    (event,) = [e for e in w.recorder.events if e[0] == "p"]
    assert event[1:3] == ("Warning", "UngatedBeforeAllocation")
    assert "removed by someone other than dra-operator" in event[3] and "nodeName" not in event[3]
    assert w.allocator.calls == 0


def test_with_the_device_plugin_a_node_gets_one_newly_placed_pod_at_a_time() -> None:
    """The kubelet's Allocate names no Pod: the next Pod for a node is ungated only once the kubelet admitted
    the one before (its container statuses appear). Claims are allocated and reserved at once all the same."""
    w = World()
    w.reconciler.device_plugin = True
    w.add(
        f"/apis/resource.dra-operator.io/v1/namespaces/{NS}/resourceclaimtemplates/tmpl",
        copy.deepcopy(TEMPLATE),
    )
    for name in ("p1", "p2"):
        w.add_pod(name, [{"name": "gpu", "resourceClaimTemplateName": "tmpl"}], names.DEVICE_PLUGIN_RESOURCE)
    w.run(w.reconciler.sync_pod(NS, "p1"))
    first = w.pod("p1")
    assert not gated(first)
    assert first["metadata"]["annotations"][names.NODE_ANNOTATION] == "n1"
    assert names.UNGATED_AT_ANNOTATION in first["metadata"]["annotations"]

    async def second_try() -> None:
        await w.reconciler.sync_pod(NS, "p2")
        for handle in w.reconciler.work.retries.values():
            handle.cancel()

    w.run(second_try())
    assert gated(w.pod("p2")), "p1 is still in delivery on n1"
    reserved = [c for c in w.kube.of("resourceclaims") if (c.get("status") or {}).get("reservedFor")]
    assert len(reserved) == 2, "p2's claim is allocated and reserved meanwhile"

    # The kubelet admitted p1 (it wrote container statuses): p2 is queued again and goes.
    w.kube.objects[pods_path("p1")]["status"] = {"phase": "Pending", "containerStatuses": [{"name": "c"}]}
    w.kube._bump(w.kube.objects[pods_path("p1")])
    w.sync()
    w.run(w.reconciler.sync_pod(NS, "p1"))
    assert ("pod", NS, "p2") in w.reconciler.work.queued
    w.run(w.reconciler.sync_pod(NS, "p2"))
    assert not gated(w.pod("p2"))


def test_uid_lookups_follow_writes_and_filter_what_went_stale() -> None:
    """The claims of a Pod and a Pod by uid come from lookups, not scans: they follow our writes at once and
    never return a claim that stopped being related (or an object that is gone)."""
    w = World()
    w.add(claims_path("shared"), copy.deepcopy(CLAIM))
    w.add_pod("a", [{"name": "s", "resourceClaimName": "shared"}])
    uid = w.pod("a")["metadata"]["uid"]
    assert w.state.claims_of(uid) == [] and w.state.pod_by_uid(uid)["metadata"]["name"] == "a"
    asyncio.run(w.reconciler.sync_pod(NS, "a"))  # reserved for a: known before any watch event
    assert [c["metadata"]["name"] for c in w.state.claims_of(uid)] == ["shared"]
    w.sync()
    w.finish("a")
    w.run(w.reconciler.releaser.sync(NS, "shared"))  # released: no longer related, although the key lingers
    assert w.state.claims_of(uid) == []
    del w.kube.objects[pods_path("a")]
    w.sync()
    assert w.state.pod_by_uid(uid) is None


def test_a_new_leaders_look_at_every_claim_waits_behind_pods() -> None:
    """On becoming leader every claim is looked at again, as a backlog: a Pod queued after it (created the
    moment the webhook pointed at the new leader) is taken first, not after thousands of claims."""
    w = World()
    for i in range(3):
        w.add(
            f"/apis/resource.dra-operator.io/v1/namespaces/{NS}/resourceclaims/c{i}",
            {"metadata": {"name": f"c{i}"}},
        )

    async def order() -> list[Any]:
        w.reconciler.enqueue_everything()
        w.reconciler.enqueue("pod", NS, "new")
        w.reconciler.enqueue("claim", NS, "event")  # a claim's own watch event is not backlog
        taken = []
        while w.reconciler.work.queue.qsize():
            taken.append((await w.reconciler.work.queue.get())[2])
        return taken

    taken = asyncio.run(order())
    assert taken[:2] == [("pod", NS, "new"), ("claim", NS, "event")]
    assert sorted(taken[2:]) == [("claim", NS, f"c{i}") for i in range(3)]


def test_the_candidate_nodes_kept_per_node_constraint_are_bounded_by_the_names_they_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each Pod's node constraint selects all four nodes: the sets kept hold at most the budget of names in
    all, and every answer is still right."""
    from dra_operator.operator import reconciler as module

    monkeypatch.setattr(module, "CANDIDATE_NAMES_KEPT", 10)
    labels = {f"l{i}": "x" for i in range(8)}
    nodes = [{"metadata": {"name": f"n{i}", "labels": labels}} for i in range(4)]
    w = World()
    for i in range(8):
        pod = {"metadata": {"name": f"p{i}", "namespace": NS}, "spec": {"nodeSelector": {f"l{i}": "x"}}}
        assert w.reconciler._candidate_nodes(pod, nodes) == {"n0", "n1", "n2", "n3"}
        kept = w.reconciler._candidates
        assert sum(len(names) for names in kept.values()) == w.reconciler._candidate_names <= 10
    miss = {"metadata": {"name": "m", "namespace": NS}, "spec": {"nodeSelector": {"other": "y"}}}
    assert w.reconciler._candidate_nodes(miss, nodes) == frozenset()
