"""The seed walkthrough with real containers: kubelets run the Pods, each container prints the devices it got.

Two real nodes (dra_operator.realnodes: kubelet + containerd + runc + CNI each), the operator from this
checkout, node-local slices published for both nodes. What each container prints (`kubectl logs`) is compared
with what the claims' status.allocation says, container by container: the claims it names, and only those.
The kubelet ends the Pods (restartPolicy Never, a command that exits); nothing here writes a Pod status.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import SEED, install_crds, seed

from dra_operator.admission import names
from dra_operator.controlplane import ApiError, ControlPlane, gpu_slice_manifest
from dra_operator.operator.local import LocalOperator
from dra_operator.realnodes import BUSYBOX_IMAGE, RealNodes

Json = dict[str, Any]
WaitFor = Callable[..., Any]
GROUP = "/apis/resource.dra-operator.io/v1"
NVIDIA = "gpu.nvidia.com"
# Prints exactly the device variables the container was given, one per line, sorted; nothing else.
PRINT_DEVICES = 'env | grep -E "^(DRA_[A-Z0-9_]*_DEVICES|NVIDIA_VISIBLE_DEVICES)=" | sort; true'
# The same, then running until the Pod is deleted (so the claims can be read while they are in use).
PRINT_AND_STAY = f'trap "exit 0" TERM; {PRINT_DEVICES}; echo ---; while true; do sleep 1; done'


def container(name: str, claims: list[Json], command: str = PRINT_AND_STAY) -> Json:
    spec: Json = {
        "name": name,
        "image": BUSYBOX_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", command],
    }
    if claims:
        spec["resources"] = {"claims": claims}
    return spec


def pod(name: str, claims: list[Json], containers: list[Json]) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": containers, "resourceClaims": claims},
    }


@pytest.fixture(scope="module")
def cluster(real_cluster: tuple[ControlPlane, RealNodes]) -> ControlPlane:
    return real_cluster[0]


@pytest.fixture(scope="module")
def operator(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOperator]:
    install_crds(cluster.kubectl)
    log_dir = tmp_path_factory.mktemp("real-operator")
    op = LocalOperator(
        cluster.kubeconfig, extra_args=("--lease-namespace=default",), log_file=log_dir / "operator.log"
    ).start()
    op.wait_ready(timeout=90)
    yield op
    print(f"--- operator log ({op.log_file}) ---\n{op.log(80)}")
    op.stop()
    for plural in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        with contextlib.suppress(ApiError):
            cluster.request("DELETE", f"/apis/admissionregistration.k8s.io/v1/{plural}/dra-operator")


@pytest.fixture(scope="module")
def inventory(
    cluster: ControlPlane, real_cluster: tuple[ControlPlane, RealNodes], operator: LocalOperator
) -> dict[str, Json]:
    """Slices for both real nodes: the demo's GPUs (4 x 64Gi, 2 x 32Gi) and two NVML-like GPUs with UUIDs."""
    nodes = real_cluster[1]
    uuids: dict[str, Json] = {}
    cluster.kubectl("apply", "-f", str(SEED / "deviceclass.yaml"))
    nvidia_class = {
        "apiVersion": "resource.dra-operator.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": "nvidia-gpu"},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{NVIDIA}"'}}]},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(nvidia_class))
    for node in nodes.names:
        gpus = {f"gpu-{i}": "64Gi" for i in range(4)} | {"gpu-4": "32Gi", "gpu-5": "32Gi"}
        cluster.request("POST", f"{GROUP}/resourceslices", gpu_slice_manifest(node, gpus))
        nvidia = gpu_slice_manifest(node, {"gpu-0": "80Gi", "gpu-1": "80Gi"}, driver=NVIDIA)
        for device in nvidia["spec"]["devices"]:
            device["attributes"]["uuid"] = {"string": f"GPU-{uuid.uuid4()}"}
        uuids[node] = {d["name"]: d["attributes"]["uuid"]["string"] for d in nvidia["spec"]["devices"]}
        cluster.request("POST", f"{GROUP}/resourceslices", nvidia)
    return uuids


@pytest.fixture
def ns(cluster: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"real-{request.node.name[:30].lower().replace('_', '-')}-{uuid.uuid4().hex[:5]}".replace("[", "-")
    cluster.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    with contextlib.suppress(ApiError):
        cluster.request("DELETE", f"/api/v1/namespaces/{name}")


def apply(cp: ControlPlane, namespace: str, obj: Json) -> None:
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def get(cp: ControlPlane, path: str) -> Json:
    found: Json = cp.request("GET", path)
    return found


def claims_of(cp: ControlPlane, namespace: str) -> list[Json]:
    items: list[Json] = get(cp, f"{GROUP}/namespaces/{namespace}/resourceclaims")["items"]
    return items


def printed_all(cp: ControlPlane, namespace: str, name: str) -> Json | None:
    """The Pod once every container of it has printed its devices (it runs on a real node), else None."""
    found = get(cp, f"/api/v1/namespaces/{namespace}/pods/{name}")
    phase = found["status"].get("phase")
    assert phase not in ("Failed", "Succeeded"), f"pod {name} ended: {json.dumps(found['status'])[:2000]}"
    if phase != "Running":
        return None
    for spec in found["spec"]["containers"]:
        out = cp.kubectl("logs", "-n", namespace, name, "-c", spec["name"], check=False).stdout
        if "---" not in out.splitlines():
            return None
    return found


def printed(cp: ControlPlane, namespace: str, pod_name: str, container_name: str) -> dict[str, set[str]]:
    """What one container printed: variable -> set of comma-separated values."""
    out = cp.kubectl("logs", "-n", namespace, pod_name, "-c", container_name).stdout
    result: dict[str, set[str]] = {}
    for line in out.splitlines():
        if line == "---":
            break
        key, _, value = line.partition("=")
        result[key] = set(value.split(",")) if value else set()
    return result


def pod_claim(cp: ControlPlane, namespace: str, pod_obj: Json, claim_name: str) -> Json:
    """The ResourceClaim behind the Pod's claim `claim_name` (generated or named)."""
    manifest = json.loads(pod_obj["metadata"]["annotations"][names.CLAIMS_ANNOTATION])
    ref = next(r for r in manifest["resourceClaims"] if r["name"] == claim_name)
    if ref.get("resourceClaimName"):
        return get(cp, f"{GROUP}/namespaces/{namespace}/resourceclaims/{ref['resourceClaimName']}")
    uid = pod_obj["metadata"]["uid"]
    return next(
        c
        for c in claims_of(cp, namespace)
        if any(o["uid"] == uid for o in c["metadata"].get("ownerReferences", []))
        and c["metadata"]["annotations"].get(names.POD_CLAIM_NAME_ANNOTATION) == claim_name
    )


def devices(claim: Json, requests: set[str] | None = None) -> set[str]:
    results = claim["status"]["allocation"]["devices"]["results"]
    return {
        f"{r['driver']}/{r['pool']}/{r['device']}"
        for r in results
        if requests is None or r["request"].split("/")[0] in requests
    }


def test_seed_walkthrough_each_container_sees_its_claims_devices(
    cluster: ControlPlane, inventory: dict[str, Json], ns: str, wait_for: WaitFor
) -> None:
    for name in ("resourceclaimtemplate.yaml", "resourceclaim.yaml"):
        apply(cluster, ns, seed(name))
    template_pod = pod(
        "pod-with-template",
        [{"name": "gpu", "resourceClaimTemplateName": "example-resource-claim-template"}],
        [container("ctr", [{"name": "gpu"}])],
    )
    sharing = [
        pod(
            f"pod-sharing-claim-{i}",
            [{"name": "shared-gpu", "resourceClaimName": "example-resource-claim"}],
            [container("ctr", [{"name": "shared-gpu"}]), container("no-claims", [])],
        )
        for i in (1, 2)
    ]
    for obj in (template_pod, *sharing):
        apply(cluster, ns, obj)

    done = {
        obj["metadata"]["name"]: wait_for(
            lambda n=obj["metadata"]["name"]: printed_all(cluster, ns, n),
            timeout=120,
            message=f"pod {obj['metadata']['name']} to run on a real node and print its devices",
        )
        for obj in (template_pod, *sharing)
    }

    shared_claim = get(cluster, f"{GROUP}/namespaces/{ns}/resourceclaims/example-resource-claim")
    shared_devices = devices(shared_claim)
    assert len(shared_devices) == 4  # allocationMode All: the node's four 64Gi GPUs
    for i in (1, 2):
        found = done[f"pod-sharing-claim-{i}"]
        node = found["spec"]["nodeName"]
        assert shared_claim["status"]["allocation"]["nodeSelector"]["nodeSelectorTerms"][0]["matchFields"][0][
            "values"
        ] == [node]
        assert printed(cluster, ns, f"pod-sharing-claim-{i}", "ctr") == {
            "DRA_SHARED_GPU_DEVICES": shared_devices,
            "NVIDIA_VISIBLE_DEVICES": {names.NVIDIA_NONE},
        }
        # A container that names no claim is given nothing.
        assert printed(cluster, ns, f"pod-sharing-claim-{i}", "no-claims") == {}

    found = done["pod-with-template"]
    generated = pod_claim(cluster, ns, found, "gpu")
    assert printed(cluster, ns, "pod-with-template", "ctr") == {
        "DRA_GPU_DEVICES": devices(generated),
        "NVIDIA_VISIBLE_DEVICES": {names.NVIDIA_NONE},
    }
    assert len(devices(generated)) == 1
    assert devices(generated).isdisjoint(shared_devices)
    results = generated["status"]["allocation"]["devices"]["results"]
    assert all(r["pool"] == found["spec"]["nodeName"] for r in results)
    # The seed's clean-up: the Pods are deleted; the generated claim goes with its Pod, and the shared claim
    # is no longer reserved (and so deallocated).
    cluster.kubectl("delete", "-n", ns, "pod", "--all", "--wait=true", "--timeout=60s")
    # The Pod ended: its generated claim is deleted; the shared claim is no longer reserved.
    wait_for(
        lambda: [c["metadata"]["name"] for c in claims_of(cluster, ns)] == ["example-resource-claim"],
        timeout=60,
        message="the generated claim to be deleted after its Pod ended",
    )
    wait_for(
        lambda: (
            not get(cluster, f"{GROUP}/namespaces/{ns}/resourceclaims/example-resource-claim")["status"].get(
                "reservedFor"
            )
        ),
        timeout=60,
        message="the ended Pods to leave the shared claim's reservedFor",
    )


def test_request_specific_containers_get_their_requests_devices_and_gpu_uuids(
    cluster: ControlPlane, inventory: dict[str, Json], ns: str, wait_for: WaitFor
) -> None:
    template = {
        "apiVersion": "resource.dra-operator.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "two-gpus"},
        "spec": {
            "spec": {
                "devices": {
                    "requests": [
                        {"name": "first", "exactly": {"deviceClassName": "nvidia-gpu"}},
                        {"name": "second", "exactly": {"deviceClassName": "nvidia-gpu"}},
                    ]
                }
            }
        },
    }
    apply(cluster, ns, template)
    obj = pod(
        "trainer",
        [{"name": "gpus", "resourceClaimTemplateName": "two-gpus"}],
        [
            container("first", [{"name": "gpus", "request": "first"}]),
            container("second", [{"name": "gpus", "request": "second"}]),
            container("both", [{"name": "gpus"}]),
            container("none", []),
        ],
    )
    apply(cluster, ns, obj)
    found = wait_for(
        lambda: printed_all(cluster, ns, "trainer"), timeout=120, message="pod trainer to print its devices"
    )
    claim = pod_claim(cluster, ns, found, "gpus")
    node = found["spec"]["nodeName"]
    by_request = {request: devices(claim, {request}) for request in ("first", "second")}
    assert all(len(d) == 1 for d in by_request.values()) and by_request["first"] != by_request["second"]

    def uuids(device_ids: set[str]) -> set[str]:
        return {inventory[node][device_id.rsplit("/", 1)[1]] for device_id in device_ids}

    for name in ("first", "second"):
        assert printed(cluster, ns, "trainer", name) == {
            "DRA_GPUS_DEVICES": by_request[name],
            "NVIDIA_VISIBLE_DEVICES": uuids(by_request[name]),
        }
    assert printed(cluster, ns, "trainer", "both") == {
        "DRA_GPUS_DEVICES": devices(claim),
        "NVIDIA_VISIBLE_DEVICES": uuids(devices(claim)),
    }
    assert printed(cluster, ns, "trainer", "none") == {}


def test_seed_job_variant_reaches_ten_completions_by_itself(
    cluster: ControlPlane, inventory: dict[str, Json], ns: str, wait_for: WaitFor
) -> None:
    """The seed's Job, the demo's 32Gi shared claim, a command that exits: the kubelet ends each Pod."""
    demo = Path(__file__).resolve().parents[2] / "operator" / "dra_operator" / "demo" / "manifests"
    apply(cluster, ns, seed("resourceclaimtemplate.yaml"))
    apply(cluster, ns, yaml.safe_load((demo / "resourceclaim-32gi.yaml").read_text()))
    job = seed("dra-example-job.yaml")
    for spec in job["spec"]["template"]["spec"]["containers"]:
        spec.update(image=BUSYBOX_IMAGE, imagePullPolicy="Never", command=["sh", "-c", PRINT_DEVICES])
    shared_devices: list[set[str]] = []
    apply(cluster, ns, job)

    def complete() -> bool:
        shared = get(cluster, f"{GROUP}/namespaces/{ns}/resourceclaims/example-resource-claim")
        if shared.get("status", {}).get("allocation"):
            shared_devices.append(devices(shared))  # while the Job runs, its Pods hold the shared claim
        status = get(cluster, f"/apis/batch/v1/namespaces/{ns}/jobs/example-dra-job")["status"]
        assert not status.get("failed"), f"job pods failed: {status}"
        return any(c["type"] == "Complete" and c["status"] == "True" for c in status.get("conditions", []))

    wait_for(complete, timeout=300, message="the Job to reach 10/10 completions")
    status = get(cluster, f"/apis/batch/v1/namespaces/{ns}/jobs/example-dra-job")["status"]
    assert status["succeeded"] == 10
    pods = get(cluster, f"/api/v1/namespaces/{ns}/pods?labelSelector=job-name=example-dra-job")["items"]
    assert len([p for p in pods if p["status"]["phase"] == "Succeeded"]) == 10
    assert shared_devices and all(seen == shared_devices[0] for seen in shared_devices)
    (shared_node,) = {device.split("/")[1] for device in shared_devices[0]}
    for found in pods:  # every Pod's containers, checked like the walkthrough's
        name = found["metadata"]["name"]
        assert found["spec"]["nodeName"] == shared_node
        separate = printed(cluster, ns, name, "container0")
        assert separate["NVIDIA_VISIBLE_DEVICES"] == {names.NVIDIA_NONE}
        (own,) = separate["DRA_SEPARATE_GPU_CLAIM_DEVICES"]
        assert own.split("/")[1] == shared_node and own not in shared_devices[0]
        for shared_container in ("container1", "container2"):
            assert printed(cluster, ns, name, shared_container) == {
                "DRA_SHARED_GPU_CLAIM_DEVICES": shared_devices[0],
                "NVIDIA_VISIBLE_DEVICES": {names.NVIDIA_NONE},
            }
    # Every generated claim is deleted once its Pod ended; only the shared claim remains.
    wait_for(
        lambda: [c["metadata"]["name"] for c in claims_of(cluster, ns)] == ["example-resource-claim"],
        timeout=120,
        message="every generated claim of the Job's Pods to be deleted",
    )
