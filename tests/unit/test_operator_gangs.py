"""Gang allocation: a group's Pods are allocated together or not at all, with the real allocator."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from test_operator_reconciler import CLAIM, NS, TEMPLATE, World, claims_path, gated, pods_path

from dra_operator.admission.mutation import AdmissionRejected, mutate
from dra_operator.api.gang import GANG, GANG_SIZE, Gang, gang_of, gang_problem
from dra_operator.operator.allocating import AllocationRequest, Allocator, Failure, Placed
from dra_operator.operator.state import SLICES

Json = dict[str, Any]
TEMPLATE_PATH = f"/apis/resource.dra-operator.io/v1/namespaces/{NS}/resourceclaimtemplates/tmpl"
JOB_UID = "batch.kubernetes.io/controller-uid"


# ------------------------------------------------------------------------------------ reading a gang


@pytest.mark.parametrize(
    ("labels", "annotations", "expected"),
    [
        ({}, {}, None),
        ({GANG: "train"}, {GANG_SIZE: "4"}, Gang("name:train", "gang train", 4)),
        ({}, {GANG: "train", GANG_SIZE: "4"}, Gang("name:train", "gang train", 4)),
        (
            {JOB_UID: "u-1", "batch.kubernetes.io/job-name": "llm"},
            {GANG_SIZE: "16"},
            Gang("job:u-1", "job llm", 16),
        ),
        ({"controller-uid": "u-2"}, {GANG_SIZE: "2"}, Gang("job:u-2", "job u-2", 2)),
        ({GANG: "train"}, {GANG_SIZE: "1"}, None),  # a gang of one is a Pod
        ({GANG: "train"}, {GANG_SIZE: "many"}, None),  # refused at admission; never a gang
    ],
)
def test_gang_of(labels: Json, annotations: Json, expected: Gang | None) -> None:
    assert gang_of({"labels": labels, "annotations": annotations}) == expected


@pytest.mark.parametrize(
    ("labels", "annotations", "template", "problem"),
    [
        ({}, {}, False, None),
        ({GANG: "train"}, {GANG_SIZE: "3"}, False, None),
        ({}, {GANG_SIZE: "3"}, True, None),  # a Job's template: its Pods get the controller uid label
        ({JOB_UID: "u"}, {GANG_SIZE: "3"}, False, None),
        ({}, {GANG_SIZE: "3"}, False, "needs a gang name"),
        ({GANG: "train"}, {}, False, "is required with"),
        ({GANG: "train"}, {GANG_SIZE: "0"}, False, "is not a whole number from 1 to 10000"),
        ({GANG: "train"}, {GANG_SIZE: "-2"}, False, "is not a whole number"),
        ({GANG: "train"}, {GANG_SIZE: "10001"}, False, "is not a whole number"),
        ({GANG: "-bad"}, {GANG_SIZE: "2"}, False, "is not a valid gang name"),
        ({GANG: "a"}, {GANG: "b", GANG_SIZE: "2"}, False, "name different gangs"),
    ],
)
def test_gang_problem(labels: Json, annotations: Json, template: bool, problem: str | None) -> None:
    found = gang_problem({"labels": labels, "annotations": annotations}, template=template)
    assert (found is None) if problem is None else (found is not None and problem in found), found


def test_admission_refuses_a_gang_it_cannot_honour() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "annotations": {GANG_SIZE: "3"}},
        "spec": {
            "containers": [{"name": "c", "resources": {"claims": [{"name": "gpu"}]}}],
            "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "tmpl"}],
        },
    }
    with pytest.raises(AdmissionRejected) as refused:
        mutate(pod, "Pod")
    assert str(refused.value).startswith('Pod "p" is invalid: metadata.annotations["resource.dra-operator')
    assert "needs a gang name" in str(refused.value)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"template": pod}}
    assert mutate(job, "Job").changed  # the Job's Pods are the gang


# ---------------------------------------------------------------------------- deciding with the allocator


def gang_world(devices: int) -> World:
    w = World()
    allocator = Allocator()
    w.allocator = allocator  # type: ignore[assignment]
    w.reconciler.allocator = allocator
    w.add(TEMPLATE_PATH, copy.deepcopy(TEMPLATE))
    slice_ = {
        "apiVersion": "resource.dra-operator.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": "n1-slice", "uid": "slice-n1", "resourceVersion": "1"},
        "spec": {
            "driver": "d.example.com",
            "nodeName": "n1",
            "pool": {"name": "n1", "generation": 1, "resourceSliceCount": 1},
            "devices": [{"name": f"gpu-{i}"} for i in range(devices)],
        },
    }
    w.kube.put("/apis/resource.dra-operator.io/v1/resourceslices/n1-slice", slice_)
    original_sync = w.sync

    def sync() -> None:
        original_sync()
        w.state.indexes[SLICES].clear()  # type: ignore[index]
        w.state.indexes[SLICES][("", "n1-slice")] = [copy.deepcopy(slice_)]  # type: ignore[index]

    w.sync = sync  # type: ignore[method-assign]
    w.sync()
    return w


def add_member(w: World, name: str, gang: str | None, size: int, refs: list[Json] | None = None) -> None:
    refs = refs or [{"name": "gpu", "resourceClaimTemplateName": "tmpl"}]
    metadata: Json = {"name": name, "namespace": NS}
    if gang is not None:
        metadata["labels"] = {GANG: gang}
        metadata["annotations"] = {GANG_SIZE: str(size)}
    raw = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": [{"name": "c", "resources": {"claims": [{"name": r["name"]} for r in refs]}}],
            "resourceClaims": refs,
        },
    }
    w.kube.put(pods_path(name), mutate(raw, "Pod").obj)
    w.sync()


def holding(w: World, pods: list[str]) -> list[str]:
    """Which of `pods` hold an allocated claim."""
    held = set()
    for claim in w.kube.of("resourceclaims"):
        status = claim.get("status") or {}
        if status.get("allocation"):
            held.update(r["name"] for r in status.get("reservedFor") or [])
    return [p for p in pods if p in held]


def test_a_gang_waits_until_all_its_pods_exist_then_all_are_allocated_at_once() -> None:
    w = gang_world(devices=4)
    add_member(w, "a0", "a", 3)
    add_member(w, "a1", "a", 3)
    w.drain(["a0", "a1"])
    assert gated(w.pod("a0")) and gated(w.pod("a1"))
    assert w.kube.of("resourceclaims") == [], "no claim, no hold before the gang is complete"
    assert "GangIncomplete" in w.recorder.reasons("a0")
    message = next(e[3] for e in w.recorder.events if e[0] == "a0" and e[2] == "GangIncomplete")
    assert message.startswith("gang a: 2 of its 3 Pods exist")

    add_member(w, "a2", "a", 3)
    w.drain(["a2"])  # one member's item places the whole gang
    assert not any(gated(w.pod(p)) for p in ("a0", "a1", "a2"))
    devices = {
        r["device"]
        for c in w.kube.of("resourceclaims")
        for r in c["status"]["allocation"]["devices"]["results"]
    }
    assert len(devices) == 3


def test_two_gangs_that_fit_alone_but_not_together_never_deadlock() -> None:
    """4 devices, two gangs of 3 created interleaved: without gangs each holds 2 and waits forever; with them
    one gang runs and the other holds nothing, says why per node, and starts when the first is done."""
    order = ["a0", "b0", "a1", "b1", "a2", "b2"]

    plain = gang_world(devices=4)
    for name in order:
        add_member(plain, name, None, 0)
        plain.drain([name])
    assert holding(plain, order) == ["a0", "b0", "a1", "b1"], "the deadlock: 2 + 2 held, both gangs stuck"

    w = gang_world(devices=4)
    for name in order:
        add_member(w, name, name[0], 3)
        w.drain([name])
    a, b = ["a0", "a1", "a2"], ["b0", "b1", "b2"]
    assert holding(w, order) == a and not any(gated(w.pod(p)) for p in a)
    assert all(gated(w.pod(p)) for p in b)
    why = next(e[3] for e in w.recorder.events if e[0] == "b0" and e[2] == "GangDoesNotFit")
    assert why.startswith("gang b (3 Pods) does not fit together, so none of its Pods is allocated: Pod ns/b")
    assert "n1" in why  # the per-node explanation of the Pod that did not fit
    unallocated = [c for c in w.kube.of("resourceclaims") if c["metadata"]["name"].startswith("b")]
    assert all(not (c.get("status") or {}).get("allocation") for c in unallocated)

    for name in a:  # gang a is done: its claims go, and gang b starts
        w.finish(name)
    for claim in [c for c in w.kube.of("resourceclaims") if c["metadata"]["name"].startswith("a")]:
        w.run(w.reconciler.releaser.sync(NS, claim["metadata"]["name"]))
    w.drain([])
    assert not any(gated(w.pod(p)) for p in b)
    assert holding(w, order) == b


def test_a_claim_the_gang_shares_is_allocated_once_and_reserved_for_each_member() -> None:
    w = gang_world(devices=3)
    w.add(claims_path("shared"), copy.deepcopy(CLAIM))
    refs = [
        {"name": "gpu", "resourceClaimTemplateName": "tmpl"},
        {"name": "s", "resourceClaimName": "shared"},
    ]
    add_member(w, "m0", "m", 2, refs)
    add_member(w, "m1", "m", 2, refs)
    w.drain(["m0", "m1"])
    assert not gated(w.pod("m0")) and not gated(w.pod("m1"))
    shared = w.kube.objects[claims_path("shared")]["status"]
    assert sorted(r["name"] for r in shared["reservedFor"]) == ["m0", "m1"]
    devices = [
        r["device"]
        for c in w.kube.of("resourceclaims")
        for r in c["status"]["allocation"]["devices"]["results"]
    ]
    assert sorted(devices) == ["gpu-0", "gpu-1", "gpu-2"], "three claims, three devices, none twice"


def test_a_partial_hold_left_by_an_interrupted_decision_is_withdrawn_when_the_gang_does_not_fit() -> None:
    w = gang_world(devices=2)
    add_member(w, "x", None, 0)
    add_member(w, "g0", "g", 2)
    w.drain(["g0"])  # incomplete: nothing held
    add_member(w, "g1", "g", 2)

    # An earlier leader allocated and reserved g0's claim, then stopped before g1's (a crash between writes).
    original = w.reconciler._write_reservations
    calls = 0

    async def crash_after_first(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("leader lost mid-decision")
        return await original(*args)

    w.reconciler._write_reservations = crash_after_first  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        w.run(w.reconciler.sync_pod(NS, "g0"))
    w.reconciler._write_reservations = original  # type: ignore[method-assign]
    assert holding(w, ["g0", "g1"]) == ["g0"]

    w.drain(["x"])  # another Pod takes a device meanwhile: the gang of 2 no longer fits in the 1 left
    assert holding(w, ["x"]) == ["x"]
    w.drain(["g0", "g1"])
    assert holding(w, ["g0", "g1"]) == [], "g0's partial hold is withdrawn"
    assert gated(w.pod("g0")) and gated(w.pod("g1"))
    assert "GangDoesNotFit" in w.recorder.reasons("g1")


def test_allocate_group_undoes_its_tentative_choices() -> None:
    w = gang_world(devices=2)
    for name in ("p0", "p1", "p2"):
        add_member(w, name, None, 0)
    requests = []
    for name in ("p0", "p1", "p2"):
        pod = w.pod(name)
        template = w.kube.objects[TEMPLATE_PATH]
        claim = {
            "apiVersion": "resource.dra-operator.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": f"{name}-gpu", "namespace": NS, "uid": f"u-{name}", "resourceVersion": "1"},
            "spec": copy.deepcopy(template["spec"]["spec"]),
        }
        request = w.reconciler._request(pod, {"gpu": claim})
        assert isinstance(request, AllocationRequest)
        requests.append(request)
    allocator = w.reconciler.allocator
    assert isinstance(allocator, Allocator)
    failed = allocator.allocate_group(requests)
    assert isinstance(failed, tuple) and failed[0] == 2 and isinstance(failed[1], Failure)
    placed = allocator.allocate_group(requests[:2])
    assert isinstance(placed, list) and all(isinstance(p, Placed) for p in placed)
    chosen = [p.allocations["gpu"]["devices"]["results"][0]["device"] for p in placed]
    assert sorted(chosen) == ["gpu-0", "gpu-1"]
    again = allocator.allocate(requests[2])  # nothing was written: every device is free again
    assert isinstance(again, Placed)
