"""Issue 13 items 1-2 on real nodes: the agent is each node's device plugin, and every container gets from its
kubelet exactly the devices allocated to the claims it names.

Two real nodes (kubelet + containerd + runc), the operator and the webhook with --device-plugin, and per node
`dra-operator agent --backend simulated --device-plugin` from this checkout, registered on the node's
kubelet socket. The simulated devices are files on the host, which the kubelet has the runtime mount into
the container (/var/run/dra-devices/<driver>/<pool>/<device>); each container lists what it finds there and
what NVIDIA_VISIBLE_DEVICES says, and the test compares that with the claims' allocations.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from helpers import install_crds, one_device_template

from dra_operator.admission import names
from dra_operator.agent.slices import MANAGED_BY, MANAGED_BY_LABEL
from dra_operator.controlplane import ApiError, ControlPlane, wait_until
from dra_operator.operator.local import LocalOperator, LocalProcess
from dra_operator.realnodes import BUSYBOX_IMAGE, RealNodes

Json = dict[str, Any]
WaitFor = Callable[..., Any]
GROUP = "/apis/resource.dra-operator.io/v1"
DRIVER = "plugin.example.com"  # a driver of its own: other modules' slices on these nodes stay apart
NVIDIA = "gpu.nvidia.com"
PER_NODE = 24
# Lists the device files and the NVIDIA devices the container was given, sorted, then waits to be deleted.
LIST_DEVICES = (
    'trap "exit 0" TERM; '
    "find /var/run/dra-devices -type f 2>/dev/null | sed s,/var/run/dra-devices/,file=, | sort; "
    "ls /var/run/nvidia-container-devices 2>/dev/null | sed s/^/volume=/ | sort; "
    'echo "nvidia=$NVIDIA_VISIBLE_DEVICES"; echo ---; while true; do sleep 1; done'
)


@pytest.fixture(scope="module")
def plugin_cluster(
    real_cluster: tuple[ControlPlane, RealNodes], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ControlPlane, RealNodes, dict[str, str]]]:
    """The operator with --device-plugin and one plugin-serving agent per node; yields (cp, nodes, uuids)."""
    cp, nodes = real_cluster
    install_crds(cp.kubectl)
    work = tmp_path_factory.mktemp("device-plugin")
    uuids: dict[str, str] = {}
    processes: list[LocalProcess] = []
    operator = LocalOperator(
        cp.kubeconfig,
        extra_args=("--lease-namespace=default", "--lease-name=device-plugin", "--device-plugin"),
        log_file=work / "operator.log",
    ).start()
    try:
        for node in nodes.names:
            gpu_uuid = f"GPU-{uuid.uuid4()}"
            uuids[node] = gpu_uuid
            inventory = [
                {"driver": DRIVER, "nodes": [node], "gpus": {"count": PER_NODE, "memory": "64Gi"}},
                {
                    "driver": NVIDIA,
                    "nodes": [node],
                    "devices": [{"name": "gpu-0", "attributes": {"type": "gpu", "uuid": gpu_uuid}}],
                },
            ]
            path = work / f"inventory-{node}.yaml"
            path.write_text(yaml.safe_dump({"pools": inventory}))
            plugin_dir = nodes.node(node).paths.var_lib_kubelet / "device-plugins"
            args = [
                "agent", "--backend=simulated", f"--inventory={path}", f"--node={node}",
                f"--kubeconfig={cp.kubeconfig}", "--interval=5", "--device-plugin",
                f"--device-plugin-dir={plugin_dir}", f"--simulated-devices-dir={work / 'devices'}",
            ]  # fmt: skip
            processes.append(LocalProcess(args, log_file=work / f"agent-{node}.log").start())
        for plural, name, selector in (
            ("deviceclasses", "plugin-gpu", f'device.driver == "{DRIVER}"'),
            ("deviceclasses", "plugin-nvidia", f'device.driver == "{NVIDIA}"'),
        ):
            with contextlib.suppress(ApiError):
                cp.request("POST", f"{GROUP}/{plural}", {
                    "apiVersion": "resource.dra-operator.io/v1", "kind": "DeviceClass",
                    "metadata": {"name": name}, "spec": {"selectors": [{"cel": {"expression": selector}}]},
                })  # fmt: skip
        operator.wait_ready(timeout=90)

        def advertised() -> bool:
            for process in processes:
                process.check()
            for node in nodes.names:
                status = cp.request("GET", f"/api/v1/nodes/{node}").get("status") or {}
                if (status.get("allocatable") or {}).get(names.DEVICE_PLUGIN_RESOURCE) in (None, "0"):
                    return False
            return True

        wait_until(advertised, 90, "each kubelet to advertise the plugin's slots (registered)")
        yield cp, nodes, uuids
    finally:
        print(f"--- operator log ---\n{operator.log(60)}")
        for process in processes:
            print(f"--- {process.name} ---\n{process.log(30)}")
            process.stop()
        operator.stop()
        for plural in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
            with contextlib.suppress(ApiError):
                cp.request("DELETE", f"/apis/admissionregistration.k8s.io/v1/{plural}/dra-operator")
        for name in ("plugin-gpu", "plugin-nvidia"):
            with contextlib.suppress(ApiError):
                cp.request("DELETE", f"{GROUP}/deviceclasses/{name}")
        # The agents' slices outlive them (a stopped agent withdraws nothing): later modules on these nodes
        # publish their own pools of the same names, and two slices of one pool make it invalid.
        selector = f"labelSelector={MANAGED_BY_LABEL}={MANAGED_BY}"
        for item in cp.request("GET", f"{GROUP}/resourceslices?{selector}")["items"]:
            with contextlib.suppress(ApiError):
                cp.request("DELETE", f"{GROUP}/resourceslices/{item['metadata']['name']}")


@pytest.fixture
def ns(plugin_cluster: tuple[ControlPlane, RealNodes, dict[str, str]]) -> Iterator[str]:
    cp = plugin_cluster[0]
    name = f"plugin-{uuid.uuid4().hex[:6]}"
    cp.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    for pod in cp.request("GET", f"/api/v1/namespaces/{name}/pods")["items"]:
        with contextlib.suppress(ApiError):
            cp.request("DELETE", f"/api/v1/namespaces/{name}/pods/{pod['metadata']['name']}",
                       {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0})  # fmt: skip
    with contextlib.suppress(ApiError):
        cp.request("DELETE", f"/api/v1/namespaces/{name}")


def pod(
    name: str, claims: list[Json], containers: list[tuple[str, list[str]]], node: str | None = None
) -> Json:
    spec: Json = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {
                "name": cname,
                "image": BUSYBOX_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", LIST_DEVICES],
                **({"resources": {"claims": [{"name": c} for c in uses]}} if uses else {}),
            }
            for cname, uses in containers
        ],
    }
    if claims:
        spec["resourceClaims"] = claims
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def listing(cp: ControlPlane, ns: str, name: str, container: str) -> dict[str, set[str]] | None:
    """What the container printed (files, volumes, nvidia), once it has; raises if the Pod ended."""
    found = cp.request("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
    status = found.get("status") or {}
    assert status.get("phase") not in ("Failed", "Succeeded"), (
        f"pod {name} ended: {json.dumps(status)[:1500]}"
    )
    if status.get("phase") != "Running":
        return None
    out = cp.kubectl("logs", "-n", ns, name, "-c", container, check=False).stdout
    if "---" not in out.splitlines():
        return None
    result: dict[str, set[str]] = {"file": set(), "volume": set(), "nvidia": set()}
    for line in out.splitlines()[: out.splitlines().index("---")]:
        key, _, value = line.partition("=")
        result[key] |= {v for v in value.split(",") if v}
    return result


def claim_devices(cp: ControlPlane, ns: str, pod_name: str) -> dict[str, set[str]]:
    """Pod claim name -> `driver/pool/device` of its claim's allocation."""
    found = cp.request("GET", f"/api/v1/namespaces/{ns}/pods/{pod_name}")
    manifest = json.loads(found["metadata"]["annotations"][names.CLAIMS_ANNOTATION])
    claims = cp.request("GET", f"{GROUP}/namespaces/{ns}/resourceclaims")["items"]
    result = {}
    for ref in manifest["resourceClaims"]:
        if ref.get("resourceClaimName"):
            claim = next(c for c in claims if c["metadata"]["name"] == ref["resourceClaimName"])
        else:
            claim = next(
                c for c in claims
                if any(o["uid"] == found["metadata"]["uid"] for o in c["metadata"].get("ownerReferences", []))
                and c["metadata"]["annotations"].get(names.POD_CLAIM_NAME_ANNOTATION) == ref["name"]
            )  # fmt: skip
        results = claim["status"]["allocation"]["devices"]["results"]
        result[ref["name"]] = {f"{r['driver']}/{r['pool']}/{r['device']}" for r in results}
    return result


def test_twenty_pods_on_one_node_at_once_each_get_their_own_devices(
    plugin_cluster: tuple[ControlPlane, RealNodes, dict[str, str]], ns: str, wait_for: WaitFor
) -> None:
    cp, nodes, _ = plugin_cluster
    node = nodes.names[0]
    templates = f"{GROUP}/namespaces/{ns}/resourceclaimtemplates"
    cp.request("POST", templates, one_device_template("one", "plugin-gpu"))
    names_ = [f"p{i:02d}" for i in range(20)]
    for name in names_:  # all at once: the webhook and the operator see them together
        refs = [{"name": "gpu", "resourceClaimTemplateName": "one"}]
        cp.request("POST", f"/api/v1/namespaces/{ns}/pods", pod(name, refs, [("main", ["gpu"])], node))
    seen = {
        name: wait_for(lambda n=name: listing(cp, ns, n, "main"), timeout=240, message=f"pod {name} to list")
        for name in names_
    }
    files = []
    for name in names_:
        allocated = claim_devices(cp, ns, name)["gpu"]
        assert seen[name]["file"] == allocated, f"{name} sees {seen[name]['file']}, allocated {allocated}"
        assert all(d.startswith(f"{DRIVER}/{node}/") for d in allocated)
        files += sorted(seen[name]["file"])
    assert len(files) == len(set(files)) == 20, "every Pod its own device"


def test_containers_see_only_their_claims_shared_claims_and_gpus_included(
    plugin_cluster: tuple[ControlPlane, RealNodes, dict[str, str]], ns: str, wait_for: WaitFor
) -> None:
    cp, nodes, uuids = plugin_cluster
    node = nodes.names[1]
    base = f"/api/v1/namespaces/{ns}"
    templates = f"{GROUP}/namespaces/{ns}/resourceclaimtemplates"
    cp.request("POST", templates, one_device_template("one", "plugin-gpu"))
    cp.request("POST", templates, one_device_template("nvidia", "plugin-nvidia"))
    shared = {
        "apiVersion": "resource.dra-operator.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "shared"},
        "spec": one_device_template("x", "plugin-gpu")["spec"]["spec"],
    }
    cp.request("POST", f"{GROUP}/namespaces/{ns}/resourceclaims", shared)
    claims = [
        {"name": "own", "resourceClaimTemplateName": "one"},
        {"name": "gpu", "resourceClaimTemplateName": "nvidia"},
        {"name": "shared", "resourceClaimName": "shared"},
    ]
    # Two Pods share one device through `shared` (the kubelet's slots do not stand in the way); in each,
    # container `both` uses its own device and the shared one, `gpu` the NVML-like GPU, `none` nothing.
    first = pod("first", claims, [("both", ["own", "shared"]), ("gpu", ["gpu"]), ("none", [])], node)
    second = pod("second", [claims[2]], [("shared-only", ["shared"])], node)
    plain = pod("plain", [], [("main", [])], node)
    for obj in (first, second, plain):
        cp.request("POST", f"{base}/pods", obj)
    got = {
        (p, c): wait_for(lambda p=p, c=c: listing(cp, ns, p, c), timeout=180, message=f"{p}/{c} to list")
        for p, c in (("first", "both"), ("first", "gpu"), ("first", "none"), ("second", "shared-only"),
                     ("plain", "main"))
    }  # fmt: skip
    allocated = claim_devices(cp, ns, "first")
    nothing: dict[str, set[str]] = {"file": set(), "volume": set(), "nvidia": set()}
    assert got[("first", "both")]["file"] == allocated["own"] | allocated["shared"]
    assert got[("first", "both")]["volume"] == set()
    gpu_view = got[("first", "gpu")]
    assert gpu_view["nvidia"] == {uuids[node]} and gpu_view["volume"] == {uuids[node]}
    assert gpu_view["file"] == allocated["gpu"]  # simulated: the GPU is a file too
    assert got[("first", "none")]["file"] == set() and got[("first", "none")]["volume"] == set()
    assert got[("second", "shared-only")]["file"] == allocated["shared"]
    assert got[("plain", "main")] == nothing
    plain_pod = cp.request("GET", f"{base}/pods/plain")
    assert names.DEVICE_PLUGIN_RESOURCE not in json.dumps(plain_pod["spec"]), "no claims, no slot"
