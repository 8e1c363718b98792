"""The operator end to end on the real control plane: `dra-operator run` as a subprocess, fake Nodes.

Covers issue 4 item 8 (a seed walkthrough, b not enough devices, c kill/restart, d Pod deleted before
allocation, e built-in DRA left alone: the 1.36 control plane serves resource.k8s.io/v1) and item 9 (API
writes per Pod).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import tempfile
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import SEED, get_or_none, install_crds, one_device_template, operator_running, seed

from dra_operator.admission import names
from dra_operator.api.gang import GANG, GANG_SIZE
from dra_operator.controlplane import ApiError, ControlPlane, gpu_slice_manifest, pod_succeeded_status
from dra_operator.operator.local import LocalOperator, child_env, cli_command, free_port

# The seed's Job, unchanged (the fixture is a byte-for-byte copy of the shared example; its README says so).
JOB_FILE = SEED / "dra-example-job.yaml"
GROUP_PATH = "/apis/resource.dra-operator.io/v1"
MERGE_PATCH = "application/merge-patch+json"
Json = dict[str, Any]
WaitFor = Callable[..., Any]


# ------------------------------------------------------------------------------------------------ harness


def local_operator(cp: ControlPlane, log_dir: Path, extra_args: tuple[str, ...] = ()) -> LocalOperator:
    """`dra-operator run` against the control plane (not started); a short Lease, for the kill tests."""
    return LocalOperator(
        cp.kubeconfig,
        extra_args=("--lease-namespace=default", "--lease-seconds=5", *extra_args),
        log_file=log_dir / "operator.log",
    )


@pytest.fixture(scope="module")
def crds(control_plane: ControlPlane) -> None:
    install_crds(control_plane.kubectl)


@pytest.fixture
def operator(
    control_plane: ControlPlane, crds: None, tmp_path: Path, wait_for: WaitFor
) -> Iterator[LocalOperator]:
    with operator_running(local_operator(control_plane, tmp_path), control_plane, wait_for) as op:
        yield op


@pytest.fixture
def namespaced_operator(
    control_plane: ControlPlane, crds: None, namespace: str, tmp_path: Path, wait_for: WaitFor
) -> Iterator[LocalOperator]:
    """An operator that watches the test's namespace only (`--namespace`, the chart's watchNamespaces)."""
    only_there = local_operator(control_plane, tmp_path, (f"--namespace={namespace}",))
    with operator_running(only_there, control_plane, wait_for) as op:
        yield op


# ------------------------------------------------------------------------------------------------ objects


def slice_for(node: str, gpus: dict[str, str], driver: str = "driver.example.com") -> Json:
    """One node-local ResourceSlice: device name -> memory capacity."""
    return gpu_slice_manifest(node, gpus, driver=driver)


def driver_class(name: str, driver: str) -> Json:
    """A DeviceClass of every device of one driver."""
    return {
        "apiVersion": "resource.dra-operator.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": name},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{driver}"'}}]},
    }


def claim_selecting(memory: str) -> Json:
    claim = seed("resourceclaim.yaml")
    expression = claim["spec"]["devices"]["requests"][0]["exactly"]["selectors"][0]["cel"]
    expression["expression"] = expression["expression"].replace('quantity("64Gi")', f'quantity("{memory}")')
    return claim


def pod(name: str, claims: list[Json], containers: list[Json] | None = None) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": containers
            or [
                {
                    "name": "main",
                    "image": "registry.invalid/noop:1",
                    "resources": {"claims": [{"name": c["name"]} for c in claims]},
                }
            ],
            "resourceClaims": claims,
        },
    }


class Cluster:
    """Short REST helpers over the admin client."""

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        self.cp, self.ns = cp, namespace

    def create(self, path: str, body: Json) -> Json:
        result: Json = self.cp.request("POST", path, body)
        return result

    def ours(self, plural: str, name: str = "", namespaced: bool = True) -> str:
        base = f"{GROUP_PATH}/namespaces/{self.ns}/{plural}" if namespaced else f"{GROUP_PATH}/{plural}"
        return f"{base}/{name}" if name else base

    def pods_path(self, name: str = "") -> str:
        return f"/api/v1/namespaces/{self.ns}/pods" + (f"/{name}" if name else "")

    def get(self, path: str) -> Json | None:
        return get_or_none(self.cp, path)

    def items(self, path: str) -> list[Json]:
        items: list[Json] = self.cp.request("GET", path)["items"]
        return items

    def claims(self) -> list[Json]:
        return self.items(self.ours("resourceclaims"))

    def delete(self, path: str) -> None:
        """Delete at once (grace period 0): with no kubelet, a bound Pod would otherwise stay Terminating and
        keep its claims reserved, as Kubernetes does for a Pod that may still run."""
        options = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if "/pods/" in path:
            options["gracePeriodSeconds"] = 0
        try:
            self.cp.request("DELETE", path, options)
        except ApiError as error:
            if error.status != 404:
                raise

    def events(self, name: str, reason: str | None = None) -> list[Json]:
        events = self.items(f"/api/v1/namespaces/{self.ns}/events")
        return [
            e
            for e in events
            if e["involvedObject"].get("name") == name and (reason is None or e.get("reason") == reason)
        ]

    def finish(self, pod_obj: Json) -> None:
        self.cp.request(
            "PATCH",
            self.pods_path(pod_obj["metadata"]["name"]) + "/status",
            pod_succeeded_status(pod_obj),
            content_type=MERGE_PATCH,
        )


def ensure_seed_class(cluster: Cluster) -> None:
    """The seed's DeviceClass (cluster-scoped, shared by the tests of this module)."""
    if cluster.get(f"{GROUP_PATH}/deviceclasses/example-device-class") is None:
        with contextlib.suppress(ApiError):  # another test may create it at the same moment
            cluster.create(f"{GROUP_PATH}/deviceclasses", seed("deviceclass.yaml"))


def ungated(p: Json | None) -> bool:
    return p is not None and not any(
        g.get("name") == names.SCHEDULING_GATE for g in p["spec"].get("schedulingGates") or []
    )


def devices_of(claim: Json) -> set[tuple[str, str, str]]:
    results = ((claim.get("status") or {}).get("allocation") or {}).get("devices", {}).get("results") or []
    return {(r["driver"], r["pool"], r["device"]) for r in results}


def assert_no_double_allocation(claims: list[Json]) -> None:
    seen: dict[tuple[str, str, str], str] = {}
    for claim in claims:
        for device in devices_of(claim):
            assert device not in seen, (
                f"{device} allocated to both {seen[device]} and {claim['metadata']['name']}"
            )
            seen[device] = claim["metadata"]["name"]


@pytest.fixture
def cluster(control_plane: ControlPlane, namespace: str, wait_for: WaitFor) -> Iterator[Cluster]:
    c = Cluster(control_plane, namespace)
    yield c
    # Play the kubelet once more: finish the test's Pods at once, so that the operator (still running: this
    # fixture is torn down before it) releases their devices instead of leaving them to a Terminating Pod.
    for p in c.items(c.pods_path()):
        c.delete(c.pods_path(p["metadata"]["name"]))
    wait_for(
        lambda: not any((x.get("status") or {}).get("reservedFor") for x in c.claims()),
        timeout=60,
        message="the test's claims to be released",
    )


@pytest.fixture
def gpu_nodes(control_plane: ControlPlane, make_node: Callable[..., Json], crds: None) -> Iterator[list[str]]:
    """Two fake nodes, each with two 64Gi and two 32Gi GPUs of driver.example.com."""
    made = []
    for index in range(2):
        node = f"gpu-{uuid.uuid4().hex[:6]}-{index}"
        make_node(node)
        control_plane.request(
            "POST",
            f"{GROUP_PATH}/resourceslices",
            slice_for(node, {"gpu-0": "64Gi", "gpu-1": "64Gi", "gpu-2": "32Gi", "gpu-3": "32Gi"}),
        )
        made.append(node)
    yield made
    for node in made:
        with contextlib.suppress(ApiError):
            control_plane.request("DELETE", f"{GROUP_PATH}/resourceslices/{node}-driver-example-com")


# ------------------------------------------------------------------------------------------------- tests


def test_seed_walkthrough(
    operator: LocalOperator, cluster: Cluster, gpu_nodes: list[str], kubectl: Any, wait_for: WaitFor
) -> None:
    seed_walkthrough(cluster, gpu_nodes, kubectl, wait_for)


def seed_walkthrough(
    cluster: Cluster,
    gpu_nodes: list[str],
    kubectl: Any,
    wait_for: WaitFor,
    pod_form: Callable[[Json], Json] = lambda obj: obj,
) -> None:
    """The seed's walkthrough on two fake nodes (each two 64Gi and two 32Gi GPUs), with the operator running.

    `pod_form` rewrites each Pod and the Job into the claim syntax the control plane's release accepts (the
    version matrix runs this on Kubernetes 1.30, whose Pods name claims under `source:`). Built-in DRA is
    checked not to act on our Pods where the release serves it.
    """
    ns = cluster.ns
    cp = cluster.cp
    ensure_seed_class(cluster)
    listed = kubectl("get", "deviceclasses.resource.dra-operator.io").stdout
    assert "example-device-class" in listed
    cluster.create(cluster.ours("resourceclaimtemplates"), seed("resourceclaimtemplate.yaml"))
    cluster.create(cluster.ours("resourceclaims"), seed("resourceclaim.yaml"))
    unused = cluster.get(cluster.ours("resourceclaims", "example-resource-claim"))
    assert unused is not None and unused["status"] == {"state": "pending"}, (
        "the CRD's default, on every release"
    )

    # A Pod using only the template gets one 64Gi GPU of its own.
    cluster.create(
        cluster.pods_path(),
        pod_form(
            pod("solo", [{"name": "gpu", "resourceClaimTemplateName": "example-resource-claim-template"}])
        ),
    )
    solo = wait_for(
        lambda: (p := cluster.get(cluster.pods_path("solo"))) and ungated(p) and p,
        timeout=60,
        message="the template Pod to be ungated",
    )
    assert "resourceClaims" not in solo["spec"], "built-in DRA must not see our claims"
    assert not (solo.get("status") or {}).get("resourceClaimStatuses")
    generated = [c for c in cluster.claims() if c["metadata"].get("ownerReferences")]
    assert len(generated) == 1
    gen = generated[0]
    assert gen["metadata"]["generateName"] == "solo-gpu-"
    assert gen["metadata"]["annotations"][names.POD_CLAIM_NAME_ANNOTATION] == "gpu"
    owner = gen["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "Pod" and owner["controller"] is True and owner["uid"] == solo["metadata"]["uid"]
    ((driver, pool, device),) = devices_of(gen)
    assert device in ("gpu-0", "gpu-1") and pool in gpu_nodes
    key = names.devices_annotation("gpu", None)
    assert solo["metadata"]["annotations"][key] == f"{driver}/{pool}/{device}"
    terms = solo["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [pool]}]}
    ]
    wait_for(
        lambda: (cluster.get(cluster.pods_path("solo")) or {}).get("spec", {}).get("nodeName") == pool,
        timeout=60,
        message="the scheduler to bind the template Pod to its node",
    )
    assert gen["status"]["state"] == "allocated,reserved"
    # The operator introduces itself: the claim's fields and status are managed by it, by name.
    assert {(m["manager"], m.get("subresource", "")) for m in gen["metadata"]["managedFields"]} == {
        ("dra-operator", ""),
        ("dra-operator", "status"),
    }
    if get_or_none(cp, "/apis/resource.k8s.io/v1") is not None:
        builtin = cp.request("GET", f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims")["items"]
        assert builtin == [], "the built-in claim controller must not act on our Pods"

    # Pods sharing the All claim land on its node (the other node: the solo Pod holds a 64Gi GPU of its node).
    shared_ref = [{"name": "shared", "resourceClaimName": "example-resource-claim"}]
    for name in ("share-a", "share-b"):
        cluster.create(cluster.pods_path(), pod_form(pod(name, shared_ref)))
    for name in ("share-a", "share-b"):
        wait_for(
            lambda name=name: ungated(cluster.get(cluster.pods_path(name))),
            timeout=60,
            message=f"{name} to be ungated",
        )
    shared = cluster.get(cluster.ours("resourceclaims", "example-resource-claim"))
    assert shared is not None
    other = next(n for n in gpu_nodes if n != pool)
    assert devices_of(shared) == {
        ("driver.example.com", other, "gpu-0"),
        ("driver.example.com", other, "gpu-1"),
    }
    assert len(shared["status"]["reservedFor"]) == 2
    for name in ("share-a", "share-b"):
        p = cluster.get(cluster.pods_path(name))
        assert p is not None
        fields = p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert fields["nodeSelectorTerms"][0]["matchFields"][0]["values"] == [other]
    assert_no_double_allocation(cluster.claims())

    describe = kubectl("describe", "pod", "solo", "-n", ns).stdout
    assert "Allocated" in describe and "from template" in describe
    describe_claim = kubectl(
        "describe", "resourceclaims.resource.dra-operator.io", gen["metadata"]["name"], "-n", ns
    ).stdout
    assert "Allocated" in describe_claim
    table = kubectl("get", "resourceclaims.resource.dra-operator.io", "-n", ns).stdout
    assert "allocated,reserved" in table and other in table

    # Release: the Pods leave; the generated claim is deleted, the shared one deallocated.
    for name in ("solo", "share-a", "share-b"):
        cluster.delete(cluster.pods_path(name))
    wait_for(
        lambda: [c["metadata"]["name"] for c in cluster.claims()] == ["example-resource-claim"],
        timeout=60,
        message="the generated claim to be deleted",
    )
    wait_for(
        lambda: (
            not (cluster.get(cluster.ours("resourceclaims", "example-resource-claim")) or {})
            .get("status", {})
            .get("allocation")
        ),
        timeout=60,
        message="the shared claim to be deallocated",
    )

    # The seed's Job as written cannot be placed: every node's 64Gi GPUs are taken by the All claim.
    job = pod_form(yaml.safe_load(JOB_FILE.read_text()))
    jobs = f"/apis/batch/v1/namespaces/{ns}/jobs"
    cluster.create(jobs, job)

    def failed_events() -> list[Json]:
        pods = cluster.items(cluster.pods_path() + "?labelSelector=job-name=example-dra-job")
        found = [e for p in pods for e in cluster.events(p["metadata"]["name"], "AllocationFailed")]
        return found if len(pods) == 2 and found else []

    events = wait_for(failed_events, timeout=60, message="AllocationFailed on the seed Job's Pods")
    message = events[0]["message"]
    for node in gpu_nodes:
        assert node in message, message
    pods = cluster.items(cluster.pods_path() + "?labelSelector=job-name=example-dra-job")
    assert all(not ungated(p) for p in pods)
    cluster.delete(f"{jobs}/example-dra-job")
    wait_for(
        lambda: not cluster.items(cluster.pods_path() + "?labelSelector=job-name=example-dra-job"),
        timeout=60,
        message="the Job's Pods to go",
    )
    wait_for(
        lambda: [c["metadata"]["name"] for c in cluster.claims()] == ["example-resource-claim"],
        timeout=60,
        message="generated claims of deleted Pods to be deleted",
    )

    # The same Job with the shared claim selecting the 32Gi GPUs: placed two Pods at a time, 10 completions.
    cluster.delete(cluster.ours("resourceclaims", "example-resource-claim"))
    wait_for(
        lambda: cluster.get(cluster.ours("resourceclaims", "example-resource-claim")) is None, timeout=30
    )
    cluster.create(cluster.ours("resourceclaims"), claim_selecting("32Gi"))
    cluster.create(jobs, job)
    finished: set[str] = set()
    max_running = 0

    def progress() -> bool:
        nonlocal max_running
        pods = cluster.items(cluster.pods_path() + "?labelSelector=job-name=example-dra-job")
        placed = [
            p
            for p in pods
            if ungated(p) and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]
        max_running = max(max_running, len(placed))
        assert_no_double_allocation(cluster.claims())
        for p in placed:
            if p["spec"].get("nodeName") and p["metadata"]["name"] not in finished:
                cluster.finish(p)
                finished.add(p["metadata"]["name"])
        status = (cluster.get(f"{jobs}/example-dra-job") or {}).get("status") or {}
        return int(status.get("succeeded") or 0) >= 10

    wait_for(progress, timeout=240, message="the 32Gi Job to reach 10 completions")
    assert max_running <= 2
    # Each container sees only the devices of the claims it names; the shared claim's devices (32Gi) and the
    # Pod's own GPU (64Gi) sit on the same node.
    placed = [
        p
        for p in cluster.items(cluster.pods_path() + "?labelSelector=job-name=example-dra-job")
        if ungated(p)
    ]
    sample = placed[0]
    annotations = sample["metadata"]["annotations"]
    own = annotations[names.devices_annotation("separate-gpu-claim", None)].split(",")
    shared_devices = annotations[names.devices_annotation("shared-gpu-claim", None)].split(",")
    node = sample["spec"]["nodeName"]
    assert len(own) == 1 and own[0].rsplit("/", 1)[-1] in ("gpu-0", "gpu-1") and f"/{node}/" in own[0]
    assert sorted(d.rsplit("/", 1)[-1] for d in shared_devices) == ["gpu-2", "gpu-3"]
    assert all(f"/{node}/" in d for d in shared_devices)
    envs = {c["name"]: {e["name"] for e in c.get("env", [])} for c in sample["spec"]["containers"]}
    assert envs == {
        "container0": {"DRA_SEPARATE_GPU_CLAIM_DEVICES", "NVIDIA_VISIBLE_DEVICES"},
        "container1": {"DRA_SHARED_GPU_CLAIM_DEVICES", "NVIDIA_VISIBLE_DEVICES"},
        "container2": {"DRA_SHARED_GPU_CLAIM_DEVICES", "NVIDIA_VISIBLE_DEVICES"},
    }
    shared = cluster.get(cluster.ours("resourceclaims", "example-resource-claim"))
    assert shared is not None
    assert {d[2] for d in devices_of(shared)} in ({"gpu-2", "gpu-3"}, set())

    # Clean-up as the walkthrough does: nothing of ours is left behind.
    cluster.delete(f"{jobs}/example-dra-job")
    cluster.delete(cluster.ours("resourceclaims", "example-resource-claim"))
    cluster.delete(cluster.ours("resourceclaimtemplates", "example-resource-claim-template"))
    wait_for(lambda: cluster.claims() == [], timeout=90, message="no claim left after clean-up")


def test_not_enough_devices_waits_for_a_node(
    operator: LocalOperator,
    cluster: Cluster,
    control_plane: ControlPlane,
    make_node: Callable[..., Json],
    wait_for: WaitFor,
    crds: None,
) -> None:
    node = f"late-node-{os.getpid()}"
    cls = driver_class(f"late-class-{os.getpid()}", "late.example.com")
    control_plane.request("POST", f"{GROUP_PATH}/deviceclasses", cls)
    cluster.create(
        cluster.ours("resourceclaimtemplates"), one_device_template("late", cls["metadata"]["name"])
    )
    cluster.create(cluster.pods_path(), pod("waiter", [{"name": "dev", "resourceClaimTemplateName": "late"}]))
    wait_for(
        lambda: cluster.events("waiter", "AllocationFailed"),
        timeout=60,
        message="an AllocationFailed event on the waiting Pod",
    )
    assert not ungated(cluster.get(cluster.pods_path("waiter")))
    make_node(node)
    control_plane.request(
        "POST", f"{GROUP_PATH}/resourceslices", slice_for(node, {"dev-0": "1Gi"}, "late.example.com")
    )
    try:
        p = wait_for(
            lambda: (q := cluster.get(cluster.pods_path("waiter"))) and ungated(q) and q,
            timeout=60,
            message="the Pod to proceed once a node with devices appears",
        )
        terms = p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == [node]
    finally:
        control_plane.request("DELETE", f"{GROUP_PATH}/resourceslices/{node}-late-example-com")
        control_plane.request("DELETE", f"{GROUP_PATH}/deviceclasses/{cls['metadata']['name']}")


def test_a_republished_slice_is_read_at_once(
    operator: LocalOperator,
    cluster: Cluster,
    control_plane: ControlPlane,
    make_node: Callable[..., Json],
    wait_for: WaitFor,
    crds: None,
) -> None:
    """An agent republishes its node's slice (a new pool generation) while a Pod holds one of its devices: the
    device it drops is never handed out, the one it adds is, the held one stays held. The operator swaps the
    node's slices into its kept snapshot rather than rebuilding it; either way the decisions must be these."""
    node, driver = f"republish-node-{os.getpid()}", "republish.example.com"
    klass = f"republish-class-{os.getpid()}"
    control_plane.request("POST", f"{GROUP_PATH}/deviceclasses", driver_class(klass, driver))
    cluster.create(cluster.ours("resourceclaimtemplates"), one_device_template("republish", klass))
    make_node(node)
    path = f"{GROUP_PATH}/resourceslices/{node}-{driver.replace('.', '-')}"
    control_plane.request(
        "POST", f"{GROUP_PATH}/resourceslices", slice_for(node, {"dev-0": "1Gi", "dev-1": "1Gi"}, driver)
    )
    annotation = names.devices_annotation("dev", None)

    def create(name: str) -> None:
        cluster.create(
            cluster.pods_path(), pod(name, [{"name": "dev", "resourceClaimTemplateName": "republish"}])
        )

    def placed_on(name: str) -> str:
        create(name)
        placed = wait_for(
            lambda: (p := cluster.get(cluster.pods_path(name))) and ungated(p) and p,
            timeout=60,
            message=f"Pod {name} to be allocated",
        )
        return str(placed["metadata"]["annotations"][annotation])

    try:
        held = placed_on("holder")
        assert held in (f"{driver}/{node}/dev-0", f"{driver}/{node}/dev-1")
        republished = control_plane.request("GET", path)
        republished["spec"]["pool"]["generation"] = 2
        kept = held.rsplit("/", 1)[1]
        devices = [d for d in republished["spec"]["devices"] if d["name"] == kept]
        devices += [{**devices[0], "name": name} for name in ("dev-2", "dev-3")]
        republished["spec"]["devices"] = devices
        control_plane.request("PUT", path, republished)
        # Decisions follow the operator's view: once its count of the slice shows the new devices, the
        # dropped one is gone and the held one taken, so only the added ones are left.
        wait_for(
            lambda: (control_plane.request("GET", path).get("status") or {}).get("devices") == 3,
            timeout=30,
            message="the operator to count the republished slice's devices",
        )
        assert {placed_on("newcomer-a"), placed_on("newcomer-b")} == {
            f"{driver}/{node}/dev-2",
            f"{driver}/{node}/dev-3",
        }
        create("late")
        wait_for(
            lambda: cluster.events("late", "AllocationFailed"),
            timeout=60,
            message="an AllocationFailed event on the Pod that finds nothing free",
        )
        assert not ungated(cluster.get(cluster.pods_path("late")))
    finally:
        control_plane.request("DELETE", path)
        control_plane.request("DELETE", f"{GROUP_PATH}/deviceclasses/{klass}")


def test_pod_deleted_before_allocation_leaves_nothing(
    operator: LocalOperator, cluster: Cluster, wait_for: WaitFor, crds: None
) -> None:
    template = seed("resourceclaimtemplate.yaml")
    template["spec"]["spec"]["devices"]["requests"][0]["exactly"]["deviceClassName"] = (
        "no-such-class-anywhere"
    )
    cluster.create(cluster.ours("resourceclaimtemplates"), template)
    cluster.create(
        cluster.pods_path(),
        pod("doomed", [{"name": "gpu", "resourceClaimTemplateName": template["metadata"]["name"]}]),
    )
    wait_for(
        lambda: cluster.events("doomed", "ClassNotFound") and cluster.claims(),
        timeout=60,
        message="ClassNotFound on the Pod, with its generated claim created",
    )
    cluster.delete(cluster.pods_path("doomed"))
    wait_for(
        lambda: cluster.get(cluster.pods_path("doomed")) is None and cluster.claims() == [],
        timeout=60,
        message="the Pod and its generated claim to be gone",
    )


@pytest.mark.parametrize(
    ("ref", "reason", "create"),
    [
        ({"resourceClaimTemplateName": "example-resource-claim-template"}, "TemplateNotFound", "template"),
        ({"resourceClaimName": "example-resource-claim"}, "ClaimNotFound", "claim"),
    ],
)
def test_missing_object_then_created(
    operator: LocalOperator,
    cluster: Cluster,
    gpu_nodes: list[str],
    wait_for: WaitFor,
    ref: Json,
    reason: str,
    create: str,
) -> None:
    """Item 3: the Pod waits, gated, with a Warning event, and proceeds by itself once the object appears."""
    ensure_seed_class(cluster)
    cluster.create(cluster.pods_path(), pod("early", [{"name": "gpu", **ref}]))
    wait_for(lambda: cluster.events("early", reason), timeout=60, message=f"{reason} event")
    event = cluster.events("early", reason)[0]
    assert event["type"] == "Warning" and event["source"]["component"] == "dra-operator"
    assert not ungated(cluster.get(cluster.pods_path("early")))
    if create == "template":
        cluster.create(cluster.ours("resourceclaimtemplates"), seed("resourceclaimtemplate.yaml"))
    else:
        cluster.create(cluster.ours("resourceclaims"), seed("resourceclaim.yaml"))
    wait_for(
        lambda: ungated(cluster.get(cluster.pods_path("early"))),
        timeout=60,
        message="the Pod to proceed once the object exists",
    )


def test_finalizer_keeps_a_reserved_claim_until_its_pods_end(
    operator: LocalOperator, cluster: Cluster, gpu_nodes: list[str], wait_for: WaitFor
) -> None:
    """Item 5: deleting a claim in use leaves it Terminating (still allocated) until its last Pod ends."""
    ensure_seed_class(cluster)
    cluster.create(cluster.ours("resourceclaims"), claim_selecting("32Gi"))
    cluster.create(
        cluster.pods_path(), pod("user", [{"name": "s", "resourceClaimName": "example-resource-claim"}])
    )
    user = wait_for(
        lambda: (
            (p := cluster.get(cluster.pods_path("user")))
            and ungated(p)
            and p.get("spec", {}).get("nodeName")
            and p
        ),
        timeout=60,
        message="the Pod to be placed",
    )
    claim_path = cluster.ours("resourceclaims", "example-resource-claim")
    cluster.delete(claim_path)
    claim = cluster.get(claim_path)
    assert claim is not None and claim["metadata"].get("deletionTimestamp")
    assert claim["status"]["allocation"] and claim["status"]["reservedFor"]
    cluster.finish(user)
    wait_for(
        lambda: cluster.get(claim_path) is None, timeout=60, message="the claim to go once its Pod ended"
    )


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        # The apiserver's own words for each case (kube-apiserver 1.36).
        ({"name": "gpu"}, "must specify one of: `resourceClaimName`, `resourceClaimTemplateName`"),
        (
            {"name": "gpu", "resourceClaimName": "a", "resourceClaimTemplateName": "b"},
            "at most one of `resourceClaimName` or `resourceClaimTemplateName` may be specified",
        ),
    ],
)
def test_reference_with_neither_or_both_names_is_rejected(
    operator: LocalOperator, cluster: Cluster, ref: Json, message: str
) -> None:
    with pytest.raises(ApiError) as info:
        cluster.create(cluster.pods_path(), pod("bad", [ref]))
    assert info.value.status in (400, 422)
    assert message in str(info.value)


def test_builtin_claims_are_left_to_kubernetes(operator: LocalOperator, cluster: Cluster) -> None:
    """Item 8e: with built-in DRA served, a name that exists only as a resource.k8s.io claim is not ours."""
    builtin = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "builtin-only"},
        "spec": {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": "builtin-class"}}]}},
    }
    cluster.create(f"/apis/resource.k8s.io/v1/namespaces/{cluster.ns}/resourceclaims", builtin)
    created = cluster.create(
        cluster.pods_path(),
        pod(
            "mixed",
            [
                {"name": "b", "resourceClaimName": "builtin-only"},
                {"name": "o", "resourceClaimName": "nowhere"},
            ],
        ),
    )
    assert [r["name"] for r in created["spec"]["resourceClaims"]] == ["b"], "the built-in reference stays"
    manifest = json.loads(created["metadata"]["annotations"][names.CLAIMS_ANNOTATION])
    assert [r["name"] for r in manifest["resourceClaims"]] == ["o"], "the unresolved name is ours"
    assert not ungated(created)


def test_an_operator_watching_some_namespaces_gates_pods_there_only(
    namespaced_operator: LocalOperator,
    control_plane: ControlPlane,
    cluster: Cluster,
    gpu_nodes: list[str],
    wait_for: WaitFor,
) -> None:
    """With `--namespace` (the chart's operator.watchNamespaces) no replica looks at other namespaces, so the
    webhook must leave their Pods alone: gated there, a Pod would wait for ever without an event."""
    ensure_seed_class(cluster)
    cluster.create(cluster.ours("resourceclaimtemplates"), seed("resourceclaimtemplate.yaml"))
    ref = {"name": "gpu", "resourceClaimTemplateName": "example-resource-claim-template"}
    watched = cluster.create(cluster.pods_path(), pod("watched", [ref]))
    assert not ungated(watched) and names.CLAIMS_ANNOTATION in watched["metadata"]["annotations"]
    other = f"unwatched-{uuid.uuid4().hex[:6]}"
    control_plane.request("POST", "/api/v1/namespaces", {"metadata": {"name": other}})
    try:
        elsewhere = control_plane.request("POST", f"/api/v1/namespaces/{other}/pods", pod("elsewhere", [ref]))
        assert ungated(elsewhere) and elsewhere["spec"]["resourceClaims"] == [ref], "left as written"
        assert names.CLAIMS_ANNOTATION not in (elsewhere["metadata"].get("annotations") or {})
    finally:
        with contextlib.suppress(ApiError):
            control_plane.request("DELETE", f"/api/v1/namespaces/{other}")
    wait_for(
        lambda: ungated(cluster.get(cluster.pods_path("watched"))),
        timeout=60,
        message="the watched namespace's Pod to be placed",
    )


def test_workload_templates_are_mutated_so_their_pods_are_born_gated(
    operator: LocalOperator, cluster: Cluster, kubectl: Any, wait_for: WaitFor
) -> None:
    """The Deployment's template is mutated once, at its create; the ReplicaSet and the Pod made from it carry
    no claim reference left, so their creates never call the webhook (its match conditions)."""
    webhooks = ("deployments", "replicasets", "pods")
    calls_before = {kind: webhook_calls(kubectl, f"{kind}.resource.dra-operator.io") for kind in webhooks}
    template = {
        "metadata": {"labels": {"app": "w"}},
        "spec": {
            "containers": [
                {"name": "c", "image": "registry.invalid/noop:1", "resources": {"claims": [{"name": "g"}]}}
            ],
            "resourceClaims": [{"name": "g", "resourceClaimTemplateName": "example-resource-claim-template"}],
        },
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "w"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "w"}}, "template": template},
    }
    created = cluster.create(f"/apis/apps/v1/namespaces/{cluster.ns}/deployments", deployment)
    spec = created["spec"]["template"]["spec"]
    assert "resourceClaims" not in spec and spec["schedulingGates"] == [{"name": names.SCHEDULING_GATE}]
    assert [e["name"] for e in spec["containers"][0]["env"]] == ["DRA_G_DEVICES", "NVIDIA_VISIBLE_DEVICES"]
    pods = wait_for(
        lambda: cluster.items(cluster.pods_path() + "?labelSelector=app=w"),
        timeout=60,
        message="the Deployment's Pod",
    )
    assert not ungated(pods[0]) and pods[0]["metadata"]["labels"][names.MANAGED_LABEL] == "true"
    calls = {
        kind: webhook_calls(kubectl, f"{kind}.resource.dra-operator.io") - calls_before[kind]
        for kind in webhooks
    }
    assert calls == {"deployments": 1, "replicasets": 0, "pods": 0}
    cluster.delete(f"/apis/apps/v1/namespaces/{cluster.ns}/deployments/w")


def test_kill_and_restart_never_double_allocates(
    operator: LocalOperator, cluster: Cluster, gpu_nodes: list[str], wait_for: WaitFor
) -> None:
    ensure_seed_class(cluster)
    template = seed("resourceclaimtemplate.yaml")
    # any GPU of the class: 4 per node, 8 in all; 12 Pods want one each
    template["spec"]["spec"]["devices"]["requests"][0]["exactly"].pop("selectors")
    cluster.create(cluster.ours("resourceclaimtemplates"), template)
    for index in range(12):
        cluster.create(
            cluster.pods_path(),
            pod(
                f"p{index}", [{"name": "gpu", "resourceClaimTemplateName": "example-resource-claim-template"}]
            ),
        )
    wait_for(
        lambda: any(ungated(p) for p in cluster.items(cluster.pods_path())),
        timeout=60,
        message="a first Pod to be allocated",
    )
    operator.kill()
    assert_no_double_allocation(cluster.claims())
    operator.start()
    wait_for(operator.ready, timeout=90, message="the restarted operator to lead")

    def settled() -> bool:
        pods = cluster.items(cluster.pods_path())
        assert_no_double_allocation(cluster.claims())
        return sum(1 for p in pods if ungated(p)) == 8

    wait_for(settled, timeout=120, message="8 of 12 Pods placed (8 GPUs)")
    pods = cluster.items(cluster.pods_path())
    assert sum(1 for p in pods if not ungated(p)) == 4
    assert_no_double_allocation(cluster.claims())


def apiserver_writes(kubectl: Any) -> dict[tuple[str, str, str, str], float]:
    """apiserver_request_total summed by (verb, group, resource, subresource), write verbs only."""
    totals: dict[tuple[str, str, str, str], float] = {}
    for line in kubectl("get", "--raw", "/metrics").stdout.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, _, value = line.rpartition(" ")
        labels = dict(
            (k, v.strip('"')) for k, _, v in (item.partition("=") for item in labels_text[24:-1].split(","))
        )
        if labels.get("verb") in ("POST", "PUT", "PATCH", "DELETE", "APPLY"):
            key = (
                labels["verb"],
                labels.get("group", ""),
                labels.get("resource", ""),
                labels.get("subresource", ""),
            )
            totals[key] = totals.get(key, 0.0) + float(value)
    return totals


def test_api_writes_per_pod(
    operator: LocalOperator, cluster: Cluster, gpu_nodes: list[str], kubectl: Any, wait_for: WaitFor
) -> None:
    """Item 9: the operator's writes per Pod with one template claim, from the API server's own counters."""
    ensure_seed_class(cluster)
    cluster.create(cluster.ours("resourceclaimtemplates"), seed("resourceclaimtemplate.yaml"))
    ref = [{"name": "gpu", "resourceClaimTemplateName": "example-resource-claim-template"}]
    count = 4  # one 64Gi GPU each: all four 64Gi GPUs of the two nodes

    def ours(delta: dict[tuple[str, str, str, str], float], verbs: tuple[str, ...]) -> dict[str, float]:
        # Our writes: our claims; Pod patches (only the operator patches Pods here: the test creates Pods with
        # POST, the scheduler binds with POST pods/binding); core Events (the scheduler posts events.k8s.io
        # ones). The counters are cluster-wide, and namespaces of earlier tests are still being emptied by
        # the namespace controller (DELETEs), so each phase counts only the verbs the operator uses in it.
        picked = {
            f"{verb} {resource}{'/' + sub if sub else ''}": n
            for (verb, group, resource, sub), n in delta.items()
            if n
            and verb in verbs
            and (
                (group == "resource.dra-operator.io" and resource == "resourceclaims")
                or (group == "" and resource == "pods" and verb == "PATCH" and not sub)
                or (group == "" and resource == "events" and verb == "POST")
            )
        }
        return picked

    def diff(after: dict[Any, float], before: dict[Any, float]) -> dict[Any, float]:
        return {k: v - before.get(k, 0.0) for k, v in after.items()}

    op_before = operator.metrics()
    before = apiserver_writes(kubectl)
    for index in range(count):
        cluster.create(cluster.pods_path(), pod(f"w{index}", ref))
    for index in range(count):
        wait_for(lambda index=index: ungated(cluster.get(cluster.pods_path(f"w{index}"))), timeout=60)
    allocated = apiserver_writes(kubectl)
    op_after = operator.metrics()
    for index in range(count):
        p = wait_for(
            lambda index=index: (
                (q := cluster.get(cluster.pods_path(f"w{index}"))) and q["spec"].get("nodeName") and q
            ),
            timeout=60,
        )
        cluster.finish(p)
    wait_for(lambda: cluster.claims() == [], timeout=60, message="the ended Pods' claims to be deleted")
    released = apiserver_writes(kubectl)

    allocation = ours(diff(allocated, before), ("POST", "PUT", "PATCH"))
    release = ours(diff(released, allocated), ("PUT", "PATCH", "DELETE", "POST"))
    alloc_writes = sum(v for k, v in allocation.items() if "events" not in k) / count
    release_writes = sum(v for k, v in release.items() if "events" not in k) / count
    events = sum(v for k, v in {**allocation, **release}.items() if "events" in k) / count
    latency_sum = op_after.get("dra_operator_allocation_latency_seconds_sum", 0.0) - op_before.get(
        "dra_operator_allocation_latency_seconds_sum", 0.0
    )
    latency_count = op_after.get("dra_operator_allocation_latency_seconds_count", 0.0) - op_before.get(
        "dra_operator_allocation_latency_seconds_count", 0.0
    )
    figures = {
        "pods": count,
        "allocation_writes_per_pod": alloc_writes,
        "release_writes_per_pod": release_writes,
        "event_posts_per_pod": events,
        "allocation": allocation,
        "release": release,
        "mean_allocation_latency_seconds": latency_sum / latency_count if latency_count else None,
    }
    report = (
        Path(os.environ.get("DRA_OPERATOR_REPORT_DIR", tempfile.gettempdir())) / "dra-operator-api-cost.json"
    )
    report.write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))
    assert latency_count == count
    # The operator's own count of the same writes agrees with the API server's.
    own = sum(
        op_after.get(f'dra_operator_api_writes_total{{resource="{r}",verb="{v}"}}', 0.0)
        - op_before.get(f'dra_operator_api_writes_total{{resource="{r}",verb="{v}"}}', 0.0)
        for v, r in (("POST", "resourceclaims"), ("PUT", "resourceclaims/status"), ("PATCH", "pods"))
    )
    assert own / count == alloc_writes, figures
    assert alloc_writes <= 3, figures


def webhook_calls(kubectl: Any, webhook: str = "resourceclaims.resource.dra-operator.io") -> float:
    """How often the API server called `webhook`, by its own apiserver_admission_webhook_admission_duration
    histogram (every operation and outcome)."""
    prefix = "apiserver_admission_webhook_admission_duration_seconds_count{"
    return sum(
        float(line.rpartition(" ")[2])
        for line in kubectl("get", "--raw", "/metrics").stdout.splitlines()
        if line.startswith(prefix) and f'name="{webhook}"' in line
    )


def test_claims_generated_for_pods_skip_validation_and_users_claims_do_not(
    operator: LocalOperator, cluster: Cluster, gpu_nodes: list[str], kubectl: Any, wait_for: WaitFor
) -> None:
    """The operator's claims copy a template whose selectors were checked when it was stored: a second call
    per Pod would only cost the API server. A user's claim (here made by the same admin user the operator
    runs as) is still checked, and refused when its selector does not compile."""
    ensure_seed_class(cluster)
    cluster.create(cluster.ours("resourceclaimtemplates"), seed("resourceclaimtemplate.yaml"))
    before = webhook_calls(kubectl)
    ref = [{"name": "gpu", "resourceClaimTemplateName": "example-resource-claim-template"}]
    cluster.create(cluster.pods_path(), pod("checked-once", ref))
    wait_for(lambda: ungated(cluster.get(cluster.pods_path("checked-once"))), timeout=60)
    assert len(cluster.claims()) == 1
    assert webhook_calls(kubectl) == before, "the generated claim was sent to the validating webhook"

    cluster.create(cluster.ours("resourceclaims"), seed("resourceclaim.yaml"))
    assert webhook_calls(kubectl) == before + 1, "a user's claim is checked"
    bad = seed("resourceclaim.yaml")
    bad["metadata"]["name"] = "bad-selector"
    bad["spec"]["devices"]["requests"][0]["exactly"]["selectors"] = [
        {"cel": {"expression": "device.driver =="}}
    ]
    with pytest.raises(ApiError) as refused:
        cluster.create(cluster.ours("resourceclaims"), bad)
    assert refused.value.status == 422 and "Syntax error" in str(refused.value), refused.value


def test_two_replicas_one_leader_and_failover(
    operator: LocalOperator, cluster: Cluster, gpu_nodes: list[str], tmp_path: Path, wait_for: WaitFor
) -> None:
    """Item 1: every replica watches and serves admission, only the Lease holder writes; a standby takes
    over."""
    ensure_seed_class(cluster)
    cluster.create(cluster.ours("resourceclaimtemplates"), seed("resourceclaimtemplate.yaml"))
    (tmp_path / "standby").mkdir()
    standby = local_operator(cluster.cp, tmp_path / "standby").start()
    try:
        wait_for(
            lambda: standby.metrics().get("dra_operator_ready") == 1.0,
            timeout=90,
            message="the standby to fill its caches",
        )
        assert standby.metrics().get("dra_operator_leader") == 0.0
        ref = [{"name": "gpu", "resourceClaimTemplateName": "example-resource-claim-template"}]
        cluster.create(cluster.pods_path(), pod("before", ref))
        wait_for(lambda: ungated(cluster.get(cluster.pods_path("before"))), timeout=60)
        assert standby.metrics().get("dra_operator_allocations_total", 0.0) == 0.0, "the standby wrote"

        operator.kill()  # no Lease hand-over: the standby waits for it to expire
        wait_for(standby.ready, timeout=60, message="the standby to take the Lease and configure the webhook")
        cluster.create(cluster.pods_path(), pod("after", ref))
        wait_for(lambda: ungated(cluster.get(cluster.pods_path("after"))), timeout=60)
        assert standby.metrics().get("dra_operator_allocations_total") == 1.0
        assert_no_double_allocation(cluster.claims())
    finally:
        # the fixture's teardown releases the Pods through a running operator: keep the standby up for it
        operator.process = standby.process
        operator.metrics_port = standby.metrics_port


def test_certificate_files_and_liveness(
    operator: LocalOperator, cluster: Cluster, tmp_path: Path, wait_for: WaitFor
) -> None:
    """Item 1: the webhook served with given certificate files (as cert-manager mounts them), and Kopf's
    liveness endpoint answering."""
    operator.stop()  # this test runs its own replica
    cert, key = cluster.cp.issue_serving_cert(tmp_path / "tls", "webhook", ("127.0.0.1",))
    liveness = free_port()
    (tmp_path / "logs").mkdir()
    own = local_operator(
        cluster.cp,
        tmp_path / "logs",
        (
            f"--tls-cert-file={cert}",
            f"--tls-key-file={key}",
            f"--tls-ca-file={cluster.cp.ca_file}",
            f"--liveness=http://127.0.0.1:{liveness}/healthz",
        ),
    )
    own.start()
    try:
        wait_for(own.ready, timeout=90, message="the operator with certificate files to lead")
        config = cluster.cp.request(
            "GET", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/dra-operator"
        )
        bundle = config["webhooks"][0]["clientConfig"]["caBundle"]
        assert base64.b64decode(bundle) == Path(cluster.cp.ca_file).read_bytes()
        created = cluster.create(
            cluster.pods_path(), pod("tls", [{"name": "g", "resourceClaimTemplateName": "anything"}])
        )
        assert not ungated(created) and "resourceClaims" not in created["spec"]
        with urllib.request.urlopen(f"http://127.0.0.1:{liveness}/healthz", timeout=5) as answer:
            assert answer.status == 200
    finally:
        # the fixture's teardown releases the Pods through a running operator: hand it this one
        operator.process, operator.metrics_port = own.process, own.metrics_port


def test_extended_resource_requests_become_a_generated_claim(
    operator: LocalOperator, cluster: Cluster, gpu_nodes: list[str], wait_for: WaitFor
) -> None:
    """Issue 12 item 1: a container written for a device plugin (`limits: {<name>: 2}`) gets two devices of
    the DeviceClass that declares <name> as its extendedResourceName, beside a claim of its own (mixed Pod);
    a name no class declares is left alone (the webhook is not even called)."""
    cp = cluster.cp
    suffix = uuid.uuid4().hex[:6]
    resource, klass = f"example.com/gpu-{suffix}", f"extended-{suffix}"
    ensure_seed_class(cluster)
    cluster.create(cluster.ours("resourceclaimtemplates"), seed("resourceclaimtemplate.yaml"))
    cp.request(
        "POST",
        f"{GROUP_PATH}/deviceclasses",
        {
            "apiVersion": "resource.dra-operator.io/v1",
            "kind": "DeviceClass",
            "metadata": {"name": klass},
            "spec": {
                "selectors": [{"cel": {"expression": "device.driver == 'driver.example.com'"}}],
                "extendedResourceName": resource,
            },
        },
    )
    try:
        config = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/dra-operator"
        wait_for(
            lambda: resource in json.dumps(cp.request("GET", config)["webhooks"][0]["matchConditions"]),
            timeout=30,
            message="the webhook configuration to name the newly declared extended resource",
        )
        body = pod(
            "mixed-ext", [{"name": "mem", "resourceClaimTemplateName": "example-resource-claim-template"}]
        )
        main = body["spec"]["containers"][0]
        main["resources"]["limits"] = {resource: "2", "cpu": "100m"}
        body["spec"]["containers"].append(
            {"name": "other", "image": "registry.invalid/noop:1", "resources": {"limits": {resource: "1"}}}
        )
        created = cluster.create(cluster.pods_path(), body)
        assert resource not in json.dumps(created["spec"]["containers"]), "kube-scheduler must not see it"
        placed = wait_for(
            lambda: (p := cluster.get(cluster.pods_path("mixed-ext"))) and ungated(p) and p,
            timeout=60,
            message="the mixed Pod to be allocated and ungated",
        )
        generated = {
            c["metadata"]["annotations"][names.POD_CLAIM_NAME_ANNOTATION]: c
            for c in cluster.claims()
            if c["metadata"].get("ownerReferences")
        }
        assert set(generated) == {"mem", names.EXTENDED_RESOURCE_CLAIM}
        extended = generated[names.EXTENDED_RESOURCE_CLAIM]
        requests = extended["spec"]["devices"]["requests"]
        assert [(r["name"], r["exactly"]["deviceClassName"], r["exactly"]["count"]) for r in requests] == [
            ("container-0-request-0", klass, 2),
            ("container-1-request-0", klass, 1),
        ]
        annotations = placed["metadata"]["annotations"]
        main_devices = annotations[
            names.devices_annotation(names.EXTENDED_RESOURCE_CLAIM, ["container-0-request-0"])
        ]
        other_devices = annotations[
            names.devices_annotation(names.EXTENDED_RESOURCE_CLAIM, ["container-1-request-0"])
        ]
        node = placed["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"
        ][0]["matchFields"][0]["values"][0]
        # Four devices on one node (each has four): the template's 64Gi GPU and three of the class.
        assert len(main_devices.split(",")) == 2 and len(other_devices.split(",")) == 1
        assert not set(main_devices.split(",")) & set(other_devices.split(","))
        assert all(f"/{node}/" in d for d in main_devices.split(",") + other_devices.split(","))
        envs = {c["name"]: {e["name"] for e in c.get("env", [])} for c in placed["spec"]["containers"]}
        assert envs["other"] == {"DRA_EXTENDED_RESOURCES_DEVICES", "NVIDIA_VISIBLE_DEVICES"}
        events = cluster.events("mixed-ext", "Allocated")
        assert events and f"for {resource}" in events[0]["message"], events

        plain = cluster.create(
            cluster.pods_path(),
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "undeclared"},
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/noop:1",
                                         "resources": {"limits": {"example.com/undeclared": "1"}}}]},
            },
        )  # fmt: skip
        assert plain["spec"]["containers"][0]["resources"]["limits"] == {"example.com/undeclared": "1"}
        assert not plain["spec"].get("schedulingGates") and names.MANAGED_LABEL not in plain["metadata"].get(
            "labels", {}
        )

        cluster.delete(cluster.pods_path("mixed-ext"))
        wait_for(
            lambda: not [c for c in cluster.claims() if c["metadata"].get("ownerReferences")],
            timeout=60,
            message="the generated claims (extended resources included) to be deleted with their Pod",
        )
    finally:
        cp.request("DELETE", f"{GROUP_PATH}/deviceclasses/{klass}")


def test_free_devices_per_node_and_pool(
    operator: LocalOperator, cluster: Cluster, gpu_nodes: list[str], kubectl: Any, wait_for: WaitFor
) -> None:
    """Issue 12 item 3: each slice's status counts its devices, the allocated, tainted and free ones, kept by
    the operator (every --pool-status-seconds); `kubectl get` shows them and `dra-operator pools` prints the
    same table from the objects themselves."""
    ensure_seed_class(cluster)
    cluster.create(cluster.ours("resourceclaimtemplates"), seed("resourceclaimtemplate.yaml"))
    cluster.create(
        cluster.pods_path(),
        pod("counted", [{"name": "gpu", "resourceClaimTemplateName": "example-resource-claim-template"}]),
    )
    placed = wait_for(
        lambda: (p := cluster.get(cluster.pods_path("counted"))) and ungated(p) and p,
        timeout=60,
        message="the Pod to be allocated",
    )
    node = placed["metadata"]["annotations"][names.devices_annotation("gpu", None)].split("/")[1]
    name = f"{node}-driver-example-com"

    def status() -> Json:
        found = cluster.get(f"{GROUP_PATH}/resourceslices/{name}") or {}
        return dict(found.get("status") or {})

    wanted = {"devices": 4, "allocated": 1, "tainted": 0, "free": 3}
    wait_for(lambda: status() == wanted, timeout=30, message=f"slice {name} to count {wanted}")
    header, row = kubectl("get", "resourceslices.resource.dra-operator.io", name).stdout.splitlines()
    assert header.split() == ["NAME", "NODE", "DRIVER", "POOL", "DEVICES", "ALLOCATED", "FREE", "AGE"]
    assert row.split()[1:7] == [node, "driver.example.com", node, "4", "1", "3"]
    printed = subprocess.run(
        cli_command("pools", "--kubeconfig", str(cluster.cp.kubeconfig), "--node", node),
        env=child_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert printed[0].split() == ["NODE", "DRIVER", "POOL", "DEVICES", "ALLOCATED", "TAINTED", "FREE"]
    assert printed[1].split() == [node, "driver.example.com", node, "4", "1", "0", "3"]

    cluster.delete(cluster.pods_path("counted"))
    idle = {"devices": 4, "allocated": 0, "tainted": 0, "free": 4}
    wait_for(lambda: status() == idle, timeout=30, message=f"slice {name} to count its device free again")


def test_an_allocated_device_turning_unhealthy_is_shown_on_its_pod(
    operator: LocalOperator, cluster: Cluster, gpu_nodes: list[str], kubectl: Any, wait_for: WaitFor
) -> None:
    """Issue 12 item 5: the agent marks a device unhealthy (its slice's device gets the `<driver>/xid` taint,
    as with --on-unhealthy=taint); the Pod holding it gets a DeviceUnhealthy event and the condition
    resource.dra-operator.io/DevicesHealthy=False, both naming the device."""
    ensure_seed_class(cluster)
    cluster.create(cluster.ours("resourceclaimtemplates"), seed("resourceclaimtemplate.yaml"))
    cluster.create(
        cluster.pods_path(),
        pod("sick", [{"name": "gpu", "resourceClaimTemplateName": "example-resource-claim-template"}]),
    )
    placed = wait_for(
        lambda: (p := cluster.get(cluster.pods_path("sick"))) and ungated(p) and p,
        timeout=60,
        message="the Pod to be allocated",
    )
    _, node, device = placed["metadata"]["annotations"][names.devices_annotation("gpu", None)].split("/")
    path = f"{GROUP_PATH}/resourceslices/{node}-driver-example-com"
    slice_obj = cluster.cp.request("GET", path)
    for entry in slice_obj["spec"]["devices"]:
        if entry["name"] == device:
            entry["taints"] = [{"key": "driver.example.com/xid", "value": "79", "effect": "NoSchedule"}]
    slice_obj["spec"]["pool"]["generation"] += 1
    cluster.cp.request("PUT", path, slice_obj)
    try:
        condition = wait_for(
            lambda: next(
                (
                    c
                    for c in (cluster.get(cluster.pods_path("sick")) or {})
                    .get("status", {})
                    .get("conditions")
                    or []
                    if c["type"] == "resource.dra-operator.io/DevicesHealthy"
                ),
                None,
            ),
            timeout=30,
            message="the Pod's DevicesHealthy condition",
        )
        assert condition["status"] == "False" and condition["reason"] == "DeviceUnhealthy"
        named = f"driver.example.com/{node}/{device} (tainted driver.example.com/xid=79:NoSchedule)"
        assert named in condition["message"], condition
        events = wait_for(lambda: cluster.events("sick", "DeviceUnhealthy"), timeout=30, message="the event")
        assert named in events[0]["message"] and events[0]["type"] == "Warning"
        described = kubectl("describe", "pod", "sick", "-n", cluster.ns).stdout
        assert "resource.dra-operator.io/DevicesHealthy" in described and "DeviceUnhealthy" in described
    finally:
        cluster.delete(cluster.pods_path("sick"))
        fresh = cluster.cp.request("GET", path)
        for entry in fresh["spec"]["devices"]:
            entry.pop("taints", None)
        fresh["spec"]["pool"]["generation"] += 1
        cluster.cp.request("PUT", path, fresh)


@pytest.fixture
def gang_devices(
    control_plane: ControlPlane, cluster: Cluster, make_node: Callable[..., Json], crds: None
) -> Iterator[str]:
    """Two fake nodes with two devices each of a driver of this test's own (4 devices that no other test's
    Pods can take), a class selecting them and the template `one` asking for one; yields the node prefix."""
    suffix = uuid.uuid4().hex[:6]
    driver, prefix = f"gang-{suffix}.example.com", f"gang-{suffix}"
    class_name = f"gang-class-{suffix}"
    control_plane.request(
        "POST",
        f"{GROUP_PATH}/deviceclasses",
        {
            "apiVersion": "resource.dra-operator.io/v1",
            "kind": "DeviceClass",
            "metadata": {"name": class_name},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{driver}"'}}]},
        },
    )
    slices = []
    for index in range(2):
        node = f"{prefix}-{index}"
        make_node(node)
        made = control_plane.request(
            "POST", f"{GROUP_PATH}/resourceslices", slice_for(node, {"dev-0": "1Gi", "dev-1": "1Gi"}, driver)
        )
        slices.append(made["metadata"]["name"])
    request = {"name": "dev", "exactly": {"deviceClassName": class_name}}
    cluster.create(
        cluster.ours("resourceclaimtemplates"),
        {
            "apiVersion": "resource.dra-operator.io/v1",
            "kind": "ResourceClaimTemplate",
            "metadata": {"name": "one"},
            "spec": {"spec": {"devices": {"requests": [request]}}},
        },
    )
    yield prefix
    for name in slices:
        with contextlib.suppress(ApiError):
            control_plane.request("DELETE", f"{GROUP_PATH}/resourceslices/{name}")
    with contextlib.suppress(ApiError):
        control_plane.request("DELETE", f"{GROUP_PATH}/deviceclasses/{class_name}")


def gang_member(name: str, gang: str | None, size: int) -> Json:
    member = pod(name, [{"name": "dev", "resourceClaimTemplateName": "one"}])
    if gang is not None:
        member["metadata"]["labels"] = {GANG: gang}
        member["metadata"]["annotations"] = {GANG_SIZE: str(size)}
    return member


def test_gangs_are_allocated_whole_and_two_that_fit_alone_never_deadlock(
    operator: LocalOperator, cluster: Cluster, gang_devices: str, kubectl: Any, wait_for: WaitFor
) -> None:
    """Issue 12 item 2. Four devices; gangs a and b of three Pods each, created interleaved (a0 b0 a1 b1 a2
    b2), each Pod settled before the next. Without gangs: 2 + 2 Pods hold devices and both groups wait
    forever. With them: gang a runs whole, gang b holds nothing and says why per node, and starts as soon as
    gang a is gone."""
    order = ["a0", "b0", "a1", "b1", "a2", "b2"]

    def settle(name: str, *reasons: str) -> None:
        wait_for(
            lambda: (
                ungated(cluster.get(cluster.pods_path(name)))
                or any(cluster.events(name, reason) for reason in reasons)
            ),
            timeout=60,
            message=f"Pod {name} to be allocated or told why not ({', '.join(reasons)})",
        )

    for name in order:  # the deadlock, without gangs
        cluster.create(cluster.pods_path(), gang_member(f"plain-{name}", None, 0))
        settle(f"plain-{name}", "AllocationFailed")
    held = [n for n in order if ungated(cluster.get(cluster.pods_path(f"plain-{n}")))]
    assert held == ["a0", "b0", "a1", "b1"], "without gangs each group holds two devices and waits forever"
    for name in order:
        cluster.delete(cluster.pods_path(f"plain-{name}"))
    wait_for(lambda: not cluster.claims(), timeout=60, message="the plain Pods' claims to be deleted")

    for name in order:  # the same, as two gangs of three
        cluster.create(cluster.pods_path(), gang_member(name, name[0], 3))
        settle(name, "GangIncomplete", "GangDoesNotFit")
    assert any(
        e["message"].startswith("gang a: 1 of its 3 Pods exist; no Pod of a gang is allocated until all 3 do")
        for e in cluster.events("a0", "GangIncomplete")
    )
    a, b = ["a0", "a1", "a2"], ["b0", "b1", "b2"]
    assert all(ungated(cluster.get(cluster.pods_path(n))) for n in a)
    wait_for(
        lambda: all(cluster.events(n, "GangDoesNotFit") for n in b), timeout=30, message="every b Pod told"
    )
    assert not any(ungated(cluster.get(cluster.pods_path(n))) for n in b)
    why = cluster.events("b2", "GangDoesNotFit")[0]["message"]
    assert why.startswith("gang b (3 Pods) does not fit together, so none of its Pods is allocated: Pod "), (
        why
    )
    assert f"{gang_devices}-0" in why and f"{gang_devices}-1" in why, "the explanation names every node"
    claims = cluster.claims()
    assert_no_double_allocation(claims)
    holders = {r["name"] for c in claims for r in (c.get("status") or {}).get("reservedFor") or []}
    assert holders == set(a), "gang b holds nothing: no partial hold"
    described = kubectl("describe", "pod", "b0", "-n", cluster.ns).stdout
    assert "GangDoesNotFit" in described

    for name in a:  # gang a is done: gang b starts as soon as it fits
        cluster.delete(cluster.pods_path(name))
    wait_for(
        lambda: all(ungated(cluster.get(cluster.pods_path(n))) for n in b),
        timeout=60,
        message="gang b to be allocated once gang a is gone",
    )
    assert_no_double_allocation(cluster.claims())


def test_a_jobs_pods_form_a_gang_of_its_declared_size(
    operator: LocalOperator, cluster: Cluster, gang_devices: str, wait_for: WaitFor
) -> None:
    """A Job whose Pod template declares `gang-size` (no name: the Job's Pods are the gang): with parallelism
    2 and gang-size 2 both Pods are placed; with parallelism 1 and gang-size 2 its Pod waits for a second
    one, saying so, and holds nothing. A Pod declaring a size without a gang is refused at admission."""

    def job(name: str, parallelism: int, size: int) -> Json:
        template = gang_member("x", None, 0)
        template.pop("apiVersion")
        template.pop("kind")
        template["metadata"] = {"annotations": {GANG_SIZE: str(size)}}
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {"parallelism": parallelism, "completions": parallelism, "template": template},
        }

    jobs = f"/apis/batch/v1/namespaces/{cluster.ns}/jobs"
    cluster.create(jobs, job("pair", 2, 2))
    cluster.create(jobs, job("alone", 1, 2))

    def job_pods(name: str) -> list[Json]:
        return cluster.items(cluster.pods_path() + f"?labelSelector=batch.kubernetes.io/job-name={name}")

    pair = wait_for(
        lambda: (found := job_pods("pair")) and len(found) == 2 and all(ungated(p) for p in found) and found,
        timeout=60,
        message="both Pods of job pair to be placed",
    )
    uids = {p["metadata"]["uid"] for p in pair}
    holders = {r["uid"] for c in cluster.claims() for r in (c.get("status") or {}).get("reservedFor") or []}
    assert uids <= holders
    (alone,) = wait_for(lambda: job_pods("alone"), timeout=60, message="the Pod of job alone")
    told = wait_for(
        lambda: cluster.events(alone["metadata"]["name"], "GangIncomplete"), timeout=60, message="its event"
    )
    assert told[0]["message"].startswith("job alone: 1 of its 2 Pods exist"), told[0]["message"]
    assert not ungated(cluster.get(cluster.pods_path(alone["metadata"]["name"])))
    assert alone["metadata"]["uid"] not in holders

    nameless = gang_member("nameless", None, 0)
    nameless["metadata"]["annotations"] = {GANG_SIZE: "2"}
    with pytest.raises(ApiError) as refused:
        cluster.create(cluster.pods_path(), nameless)
    assert "needs a gang name" in str(refused.value)
    for name in ("pair", "alone"):
        cluster.delete(f"{jobs}/{name}")


def taint_rule(name: str, selector: Json, key: str, effect: str, value: str = "") -> Json:
    taint = {"key": key, "effect": effect} | ({"value": value} if value else {})
    return {
        "apiVersion": "resource.dra-operator.io/v1",
        "kind": "DeviceTaintRule",
        "metadata": {"name": name},
        "spec": {"deviceSelector": selector, "taint": taint},
    }


def test_device_taint_rules_keep_claims_off_devices_and_evict_pods(
    operator: LocalOperator, cluster: Cluster, gpu_nodes: list[str], kubectl: Any, wait_for: WaitFor
) -> None:
    """Issue 12 item 4. A NoSchedule rule on a pool keeps new claims off its devices; a CEL rule counts what
    it selects; a NoExecute rule on a Pod's device evicts it (event, DisruptionTarget, deleted) unless its
    claim tolerates the taint; the node agent's NoExecute taint in a slice (--on-unhealthy evict) evicts the
    same way; a rule whose CEL does not compile is refused at admission."""
    first, second = gpu_nodes
    suffix = uuid.uuid4().hex[:6]
    rules = f"{GROUP_PATH}/devicetaintrules"
    made: list[str] = []

    def create_rule(rule: Json) -> None:
        cluster.cp.request("POST", rules, rule)
        made.append(rule["metadata"]["name"])

    def rule_status(name: str) -> Json:
        return dict((cluster.get(f"{rules}/{name}") or {}).get("status") or {})

    def place(name: str, template: str = "example-resource-claim-template") -> tuple[str, str]:
        cluster.create(
            cluster.pods_path(), pod(name, [{"name": "gpu", "resourceClaimTemplateName": template}])
        )
        placed = wait_for(
            lambda: (p := cluster.get(cluster.pods_path(name))) and ungated(p) and p,
            timeout=60,
            message=f"Pod {name} to be allocated",
        )
        _, node, device = placed["metadata"]["annotations"][names.devices_annotation("gpu", None)].split("/")
        return node, device

    def evicted(name: str) -> Json:
        return wait_for(
            lambda: (
                (p := cluster.get(cluster.pods_path(name))) is None
                or (p["metadata"].get("deletionTimestamp") and p)
            ),
            timeout=30,
            message=f"Pod {name} to be evicted",
        )

    ensure_seed_class(cluster)
    cluster.create(cluster.ours("resourceclaimtemplates"), seed("resourceclaimtemplate.yaml"))
    tolerant = seed("resourceclaimtemplate.yaml")
    tolerant["metadata"]["name"] = "tolerant"
    tolerant["spec"]["spec"]["devices"]["requests"][0]["exactly"]["tolerations"] = [
        {"key": "example.com/maintenance", "operator": "Exists"}
    ]
    cluster.create(cluster.ours("resourceclaimtemplates"), tolerant)
    try:
        # NoSchedule on the first node's pool: its four devices counted, new claims placed on the second node.
        drain = f"drain-{suffix}"
        create_rule(
            taint_rule(
                drain, {"driver": "driver.example.com", "pool": first}, "example.com/drain", "NoSchedule"
            )
        )
        wait_for(
            lambda: rule_status(drain).get("matchedDevices") == 4, timeout=30, message="4 devices counted"
        )
        # The free-devices view counts them tainted (those no claim holds): none of the pool is free.
        first_slice = f"{GROUP_PATH}/resourceslices/{first}-driver-example-com"

        def drained() -> bool:
            counts = dict((cluster.get(first_slice) or {}).get("status") or {})
            return counts.get("free") == 0 and counts.get("tainted") == 4 - counts.get("allocated", -1)

        wait_for(drained, timeout=30, message=f"{first_slice} to count the rule's devices tainted")
        header, row = kubectl("get", "devicetaintrules.resource.dra-operator.io", drain).stdout.splitlines()
        assert header.split() == ["NAME", "KEY", "EFFECT", "DRIVER", "POOL", "DEVICE", "DEVICES", "AGE"]
        assert row.split()[:6] == [
            drain,
            "example.com/drain",
            "NoSchedule",
            "driver.example.com",
            first,
            "4",  # the DEVICE column is blank: the rule names no device
        ]
        node, device = place("steered")
        assert node == second

        # A CEL selector: the 32Gi devices of the first node.
        small = f"small-{suffix}"
        expression = 'device.capacity["driver.example.com"].memory == quantity("32Gi")'
        create_rule(
            taint_rule(
                small,
                {"pool": first, "selectors": [{"cel": {"expression": expression}}]},
                "example.com/small",
                "None",
            )
        )
        wait_for(
            lambda: rule_status(small).get("matchedDevices") == 2, timeout=30, message="2 devices counted"
        )

        # NoExecute on the Pod's device: evicted, saying why; a Pod whose claim tolerates the taint stays.
        cluster.delete(f"{rules}/{drain}")
        made.remove(drain)
        wait_for(lambda: cluster.get(f"{rules}/{drain}") is None, timeout=30, message="the drain rule gone")
        calm_node, calm_device = place("calm", "tolerant")
        maintenance = f"maintenance-{suffix}"
        selector = {"driver": "driver.example.com", "pool": node, "device": device}
        create_rule(taint_rule(maintenance, selector, "example.com/maintenance", "NoExecute", "planned"))
        gone = evicted("steered")
        told = wait_for(
            lambda: cluster.events("steered", "DeviceTaintEviction"), timeout=30, message="the event"
        )
        expected = (
            f"evicted: device driver.example.com/{node}/{device} has taint "
            "example.com/maintenance=planned:NoExecute, which claim "
        )
        assert told[0]["message"].startswith(expected), told[0]["message"]
        assert told[0]["message"].endswith(f"does not tolerate (DeviceTaintRule {maintenance})")
        if gone is not True and gone:
            conditions = {c["type"]: c for c in (gone.get("status") or {}).get("conditions") or []}
            assert conditions["DisruptionTarget"]["reason"] == "DeletionByDeviceTaintManager"
        status = wait_for(
            lambda: (s := rule_status(maintenance)).get("matchedDevices") == 1 and s,
            timeout=30,
            message="the maintenance rule's status",
        )
        assert [c["type"] for c in status["conditions"]] == ["EvictionInProgress"]
        tolerating = taint_rule(
            f"maintenance-calm-{suffix}",
            {"driver": "driver.example.com", "pool": calm_node, "device": calm_device},
            "example.com/maintenance",
            "NoExecute",
        )
        create_rule(tolerating)
        wait_for(
            lambda: rule_status(tolerating["metadata"]["name"]).get("matchedDevices") == 1,
            timeout=30,
            message="the rule on the tolerating Pod's device to be applied",
        )
        calm = cluster.get(cluster.pods_path("calm"))
        assert calm is not None and not calm["metadata"].get("deletionTimestamp"), "a tolerating Pod stays"
        assert not cluster.events("calm", "DeviceTaintEviction")

        # The node agent's health taint (--on-unhealthy evict): NoExecute in the slice itself, same eviction.
        node, device = place("xid")
        path = f"{GROUP_PATH}/resourceslices/{node}-driver-example-com"
        slice_obj = cluster.cp.request("GET", path)
        for entry in slice_obj["spec"]["devices"]:
            if entry["name"] == device:
                entry["taints"] = [{"key": "driver.example.com/xid", "value": "79", "effect": "NoExecute"}]
        slice_obj["spec"]["pool"]["generation"] += 1
        cluster.cp.request("PUT", path, slice_obj)
        evicted("xid")
        told = wait_for(lambda: cluster.events("xid", "DeviceTaintEviction"), timeout=30, message="the event")
        assert "driver.example.com/xid=79:NoExecute" in told[0]["message"]
        assert told[0]["message"].endswith("(set in the device's ResourceSlice)")

        # Refused at admission: a selector that does not compile.
        with pytest.raises(ApiError) as refused:
            cluster.cp.request(
                "POST",
                rules,
                taint_rule(
                    f"bad-{suffix}",
                    {"selectors": [{"cel": {"expression": "device.driver =="}}]},
                    "k",
                    "NoSchedule",
                ),
            )
        assert "compilation failed" in str(refused.value)
    finally:
        for name in made:
            cluster.delete(f"{rules}/{name}")
