"""The chart installed for real: `helm install` with the image built here, on real nodes, then the seed.

The operator Deployment (two replicas, one holding the Lease) and the agent DaemonSet (simulated backend) run
as Pods from the image built from the Dockerfile (dra_operator.tools.image), under the chart's
ServiceAccounts; the apiserver reaches the webhook through its Service (endpoint routing). Then the seed
walkthrough with containers that print their devices, `helm upgrade` (the agents roll and publish the new
inventory), and `helm uninstall`, after which nothing of the release is left.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import claim_status_schema, get_or_none, seed, strip_claim_status_default

from dra_operator.controlplane import ApiError, ControlPlane
from dra_operator.realnodes import BUSYBOX_IMAGE, RealNodes
from dra_operator.tools import image as images
from dra_operator.tools.helm import HelmError, chart_dir, ensure_helm, isolated_env, run_helm

Json = dict[str, Any]
WaitFor = Callable[..., Any]
GROUP = "/apis/resource.dra-operator.io/v1"
NAMESPACE = "dra-system"
RELEASE = "dra-operator"
# Print the device variables, then stay until deleted (the claims are read while the Pods hold them).
# With the device plugin on, also the device files the kubelet had mounted (FILES=driver/pool/device,...).
PRINT_AND_STAY = (
    'trap "exit 0" TERM; env | grep -E "^(DRA_[A-Z0-9_]*_DEVICES|NVIDIA_VISIBLE_DEVICES)=" | sort; '
    'echo "FILES=$(cd /var/run/dra-devices 2>/dev/null && find . -type f | sed s,^./,, | sort | tr "\\n" ,)" '
    '| sed "s/,$//"; '
    "echo ---; while true; do sleep 1; done"
)
# Namespaced kinds a release could leave behind, and cluster-scoped ones (listed by API path).
NAMESPACED = (
    "/api/v1/namespaces/{ns}/pods",
    "/api/v1/namespaces/{ns}/services",
    "/api/v1/namespaces/{ns}/secrets",
    "/api/v1/namespaces/{ns}/configmaps",
    "/api/v1/namespaces/{ns}/serviceaccounts",
    "/apis/apps/v1/namespaces/{ns}/deployments",
    "/apis/apps/v1/namespaces/{ns}/daemonsets",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
    "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "/apis/batch/v1/namespaces/{ns}/jobs",
)
CLUSTER = (
    "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
    "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
    f"{GROUP}/resourceslices",
)
# What a namespace holds without any release in it (made by the controller manager).
NAMESPACE_DEFAULTS = {("serviceaccounts", "default"), ("configmaps", "kube-root-ca.crt")}


@pytest.fixture(scope="module")
def operator_image() -> images.BuiltImage:
    return images.build_operator_image()


class Release:
    def __init__(self, cp: ControlPlane, work: Path) -> None:
        self.cp = cp
        self.helm = ensure_helm()
        self.env = isolated_env(cp.kubeconfig, work)

    def helm_run(self, *args: str) -> str:
        return run_helm([*args, "--namespace", NAMESPACE], helm=self.helm, env=self.env)

    def get(self, path: str) -> Json:
        found: Json = self.cp.request("GET", path)
        return found


def values(image: images.BuiltImage, gpus: int, devices_dir: Path) -> list[str]:
    """local-values with the image built here, two operator replicas, and the agents as device plugins
    (their simulated device files under `devices_dir`, which goes with the nodes)."""
    repository, tag = image.reference.rsplit(":", 1)
    return [
        "--set", "agent.devicePlugin.enabled=true",
        "--set", f"agent.devicePlugin.simulatedDevicesDir={devices_dir}",
        "-f", str(chart_dir() / "ci" / "local-values.yaml"),
        "--set", f"image.repository={repository}",
        "--set", f"image.tag={tag}",
        "--set", "image.pullPolicy=Never",
        "--set", "operator.replicas=2",
        "--set", "operator.podDisruptionBudget.enabled=true",
        "--set", f"agent.simulated.inventory.pools[0].gpus.count={gpus}",
        "--set", "agent.simulated.inventory.pools[0].gpus.memory=64Gi",
    ]  # fmt: skip


def ready_pods(release: Release, component: str) -> list[Json]:
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}"
    pods = release.get(f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={selector}")["items"]
    return [
        p
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    ]


def all_ready(release: Release, component: str, count: int) -> list[Json] | None:
    found = ready_pods(release, component)
    return found if len(found) == count else None


def slice_counts(release: Release) -> dict[str, int]:
    slices = release.get(f"{GROUP}/resourceslices")["items"]
    return {s["spec"]["nodeName"]: len(s["spec"]["devices"]) for s in slices}


def leftovers(cp: ControlPlane) -> list[str]:
    found: list[str] = []
    for template in NAMESPACED:
        path = template.format(ns=NAMESPACE)
        kind = path.rsplit("/", 1)[1]
        for item in cp.request("GET", path)["items"]:
            if (kind, item["metadata"]["name"]) not in NAMESPACE_DEFAULTS:
                found.append(f"{kind}/{item['metadata']['name']}")
    for path in CLUSTER:
        for item in cp.request("GET", path)["items"]:
            labels = item["metadata"].get("labels") or {}
            if labels.get("app.kubernetes.io/instance") == RELEASE or path.endswith("resourceslices"):
                found.append(f"{path.rsplit('/', 1)[1]}/{item['metadata']['name']}")
    return found


def retried_test(release: Release) -> str | None:
    """`helm test`'s output once it passes (None while it fails: a new leader may not have taken over yet)."""
    try:
        return release.helm_run("test", RELEASE, "--timeout=120s")
    except HelmError:
        return None


@pytest.fixture
def release(
    real_cluster: tuple[ControlPlane, RealNodes], operator_image: images.BuiltImage, tmp_path: Path
) -> Iterator[Release]:
    cp, nodes = real_cluster
    nodes.import_image(images.save_image(operator_image.reference))
    setup = Release(cp, tmp_path)
    yield setup
    with contextlib.suppress(Exception):
        setup.helm_run("uninstall", RELEASE, "--wait", "--timeout=120s")
    with contextlib.suppress(ApiError):
        cp.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}")


def printed(cp: ControlPlane, namespace: str, pod: str) -> dict[str, set[str]]:
    out = cp.kubectl("logs", "-n", namespace, pod).stdout
    lines = (line.partition("=") for line in out.splitlines() if line != "---")
    return {key: set(value.split(",")) for key, _, value in lines}


def test_helm_install_on_real_nodes_seed_upgrade_uninstall(
    real_cluster: tuple[ControlPlane, RealNodes],
    release: Release,
    operator_image: images.BuiltImage,
    wait_for: WaitFor,
) -> None:
    cp, nodes = real_cluster
    devices = nodes.run_dir / "devices"  # the simulated device files: removed with the nodes
    release.helm_run(
        "install", RELEASE, str(chart_dir()), "--create-namespace", *values(operator_image, 4, devices),
        "--wait", "--timeout=240s",
    )  # fmt: skip

    # ---- the operator and the agents run as Pods of the image, under the chart's ServiceAccounts ----
    (deployment,) = release.get(
        f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments?labelSelector=app.kubernetes.io/instance={RELEASE}"
    )["items"]
    operators = wait_for(
        lambda: all_ready(release, "operator", 2), timeout=120, message="both operator replicas Ready"
    )
    agents = wait_for(
        lambda: all_ready(release, "agent", len(nodes.names)), timeout=120, message="an agent per node Ready"
    )
    assert {p["spec"]["nodeName"] for p in agents} == set(nodes.names)
    for found in (*operators, *agents):
        (container,) = found["spec"]["containers"]
        assert container["image"] == operator_image.reference
        status = found["status"]["containerStatuses"][0]
        assert status["ready"] and status["restartCount"] == 0, status
    assert {p["spec"]["serviceAccountName"] for p in operators} == {
        deployment["spec"]["template"]["spec"]["serviceAccountName"]
    }
    lease = wait_for(
        lambda: (
            (found := release.get(f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"))["items"]
            and found
        ),
        timeout=60,
        message="the operator's Lease",
    )["items"]
    # The holder's identity is its Pod's name (plus a per-process suffix).
    (holder,) = (str(item["spec"].get("holderIdentity")) for item in lease)
    assert any(holder.startswith(p["metadata"]["name"]) for p in operators), lease
    webhooks = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    webhook = wait_for(
        lambda: [
            w
            for w in release.get(webhooks)["items"]
            if (w["metadata"].get("labels") or {}).get("app.kubernetes.io/instance") == RELEASE
            and all(h["clientConfig"].get("caBundle") for h in w["webhooks"])
        ],
        timeout=60,
        message="the leader to fill the webhook configuration's caBundle",
    )[0]
    assert all("service" in h["clientConfig"] for h in webhook["webhooks"])  # through the Service
    wait_for(
        lambda: slice_counts(release) == dict.fromkeys(nodes.names, 4),
        timeout=60,
        message="each agent Pod to publish its node's four GPUs",
    )

    # ---- helm test: `dra-operator check` in a Pod of the image, under RBAC made and deleted with it ----
    test_pod = f"{RELEASE}-test"  # the fullname is the release name, which contains the chart's name
    hooks = [
        f"/api/v1/namespaces/{NAMESPACE}/pods/{test_pod}",
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{test_pod}",
        f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{test_pod}",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/roles/{test_pod}-lease",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/{test_pod}-dry-run",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/{test_pod}-dry-run",
    ]

    def hooks_left() -> list[str]:
        return [path for path in hooks if get_or_none(cp, path) is not None]

    passed = release.helm_run("test", RELEASE, "--timeout=120s")
    assert re.search(r"Phase:\s+Succeeded", passed), passed
    assert not hooks_left(), "the test's hooks outlived its success"
    # With no replica running, the check fails and says why (a failed test's Pod stays for its logs).
    deployment_name = deployment["metadata"]["name"]
    cp.kubectl("scale", "-n", NAMESPACE, f"deployment/{deployment_name}", "--replicas=0")
    wait_for(lambda: not ready_pods(release, "operator"), timeout=60, message="no operator replica")
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"
    wait_for(
        lambda: not any(item["spec"].get("holderIdentity") for item in release.get(leases)["items"]),
        timeout=60,
        message="the leader to release its Lease as it stopped",
    )
    with pytest.raises(HelmError) as failed:
        release.helm_run("test", RELEASE, "--timeout=120s")
    # Helm prints the check's lines (the Pod's log, by its output-log policy): what failed, and why.
    verdicts = dict(
        (part, verdict) for verdict, part in re.findall(r"^(ok|warn|FAIL)\s+(\S+)", str(failed.value), re.M)
    )
    assert verdicts == {"API": "ok", "CRDs": "ok", "leader": "FAIL", "webhook": "FAIL", "devices": "ok"}, (
        failed.value
    )
    # Its RBAC went with it; only the failed Pod stays, for `kubectl logs`.
    assert hooks_left() == hooks[:1]
    cp.kubectl("scale", "-n", NAMESPACE, f"deployment/{deployment_name}", "--replicas=2")
    wait_for(lambda: all_ready(release, "operator", 2), timeout=120, message="both replicas Ready again")
    passed = wait_for(
        lambda: retried_test(release), timeout=90, message="helm test to pass once a replica leads again"
    )
    assert re.search(r"Phase:\s+Succeeded", passed), passed
    assert not hooks_left(), "the test's hooks outlived its success"

    # ---- the seed walkthrough through the in-cluster webhook and operator ----
    namespace = f"seed-{uuid.uuid4().hex[:6]}"
    cp.request("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
    cp.kubectl("apply", "-f", "-", input=json.dumps(seed("deviceclass.yaml")))
    for name in ("resourceclaimtemplate.yaml", "resourceclaim.yaml"):
        cp.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(seed(name)))
    pods = {
        "with-template": {"name": "gpu", "resourceClaimTemplateName": "example-resource-claim-template"},
        "sharing-1": {"name": "gpu", "resourceClaimName": "example-resource-claim"},
        "sharing-2": {"name": "gpu", "resourceClaimName": "example-resource-claim"},
    }
    for name, claim in pods.items():
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "resourceClaims": [claim],
                "containers": [
                    {
                        "name": "ctr",
                        "image": BUSYBOX_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["sh", "-c", PRINT_AND_STAY],
                        "resources": {"claims": [{"name": "gpu"}]},
                    }
                ],
            },
        }
        cp.request("POST", f"/api/v1/namespaces/{namespace}/pods", body)

    def has_printed(name: str) -> bool:
        phase = release.get(f"/api/v1/namespaces/{namespace}/pods/{name}")["status"].get("phase")
        assert phase in ("Pending", "Running"), f"pod {name}: {phase}"
        return "---" in cp.kubectl("logs", "-n", namespace, name, check=False).stdout.splitlines()

    for name in pods:
        wait_for(
            lambda n=name: has_printed(n), timeout=120, message=f"pod {name} to run and print its devices"
        )
    shared = release.get(f"{GROUP}/namespaces/{namespace}/resourceclaims/example-resource-claim")
    results = shared["status"]["allocation"]["devices"]["results"]
    shared_devices = {f"{r['driver']}/{r['pool']}/{r['device']}" for r in results}
    for name in ("sharing-1", "sharing-2"):
        assert printed(cp, namespace, name)["DRA_GPU_DEVICES"] == shared_devices
        # Delivered by the kubelet through the agent's device plugin: the shared device, nothing else.
        assert printed(cp, namespace, name)["FILES"] == shared_devices
    own = printed(cp, namespace, "with-template")["DRA_GPU_DEVICES"]
    assert len(own) == 1 and own.isdisjoint(shared_devices)
    assert printed(cp, namespace, "with-template")["FILES"] == own
    cp.request("DELETE", f"/api/v1/namespaces/{namespace}")
    wait_for(
        lambda: not release.get(f"{GROUP}/namespaces/{namespace}/resourceclaims")["items"],
        timeout=90,
        message="the walkthrough's claims to be released and deleted with the namespace",
    )

    # ---- helm upgrade: six GPUs per node; the agents roll and publish them ----
    # The CRDs as an older chart left them (Helm never updates crds/): the claims' status default missing. The
    # pre-upgrade hook's Job, a Pod of the image under the hook's RBAC, applies the image's CRDs first.
    strip_claim_status_default(cp)
    before = {p["metadata"]["uid"] for p in agents}
    release.helm_run(
        "upgrade", RELEASE, str(chart_dir()), *values(operator_image, 6, devices), "--wait", "--timeout=240s"
    )
    assert claim_status_schema(cp).get("default") == {"state": "pending"}, "the hook restored the CRD"
    hook = f"labelSelector=app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=crds"
    for path in (
        f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    ):
        assert release.get(f"{path}?{hook}")["items"] == [], f"the hook's {path} deleted once it succeeded"
    wait_for(
        lambda: slice_counts(release) == dict.fromkeys(nodes.names, 6),
        timeout=120,
        message="the upgraded agents to publish six GPUs per node",
    )
    after = wait_for(
        lambda: all_ready(release, "agent", len(nodes.names)),
        timeout=120,
        message="the agents Ready after the upgrade",
    )
    assert before.isdisjoint(p["metadata"]["uid"] for p in after)  # new Pods, not the old ones
    assert len(ready_pods(release, "operator")) == 2

    # ---- helm uninstall: nothing of the release is left ----
    release.helm_run("uninstall", RELEASE, "--wait", "--timeout=120s")
    wait_for(lambda: not leftovers(cp), timeout=120, message="nothing of the release left after uninstall")
