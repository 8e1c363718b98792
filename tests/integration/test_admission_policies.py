"""Issue 13 item 4 on the real control plane: forgery refused by the chart's ValidatingAdmissionPolicies.

One `helm install` (module scope) with the simulated backend; the operator and one agent run from this
checkout as the chart's ServiceAccounts (the agent with a token bound to its DaemonSet Pod, as the kubelet
mounts it), so the policies meet the real identities. Each forgery is tried as a user would (server-side
dry-run where nothing needs to exist, real writes where it does) and must be refused with the policy's
message, while the legitimate path next to it still works. The module runs on every release of the version
matrix (the `plane` fixture), so the policies are checked on Kubernetes 1.30 to 1.37.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_chart_install import (
    CHART,
    GPU_LABEL,
    Install,
    claim_pod,
    downward_env,
    gated,
    local_operator,
)

from dra_operator.admission import names
from dra_operator.controlplane import (
    ApiError,
    ControlPlane,
    gpu_slice_manifest,
    in_claim_form,
    node_manifest,
    wait_until,
)
from dra_operator.operator.local import LocalProcess, free_port, scrape_metrics
from dra_operator.tools.helm import ensure_helm

OURS = "/apis/resource.dra-operator.io/v1"
Json = dict[str, Any]
WaitFor = Callable[..., Any]


@dataclass
class Setup:
    cp: ControlPlane
    install: Install
    node: str  # the agent's node
    other: str  # another GPU node, without an agent
    agent_config: Path  # bound to the agent Pod on `node`
    agent_unbound: Path  # a token of the same ServiceAccount bound to nothing
    work_ns: str  # where users create their Pods and claims

    def kubectl(self, *args: str, input: str | None = None, config: Path | None = None) -> tuple[int, str]:
        extra = [f"--kubeconfig={config}"] if config else []
        result = self.cp.kubectl(*extra, *args, input=input, check=False)
        return result.returncode, (result.stderr or result.stdout).strip()

    def dry_run(self, obj: Json, namespace: str | None = None) -> tuple[int, str]:
        ns = namespace or self.work_ns
        return self.kubectl("create", "--dry-run=server", "-n", ns, "-f", "-", input=json.dumps(obj))


@pytest.fixture(scope="module")
def setup(plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    cp = plane
    suffix = uuid.uuid4().hex[:5]
    ns, work_ns = f"policies-{suffix}", f"policy-users-{suffix}"
    for name in (ns, work_ns):
        cp.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    work = tmp_path_factory.mktemp("policies")
    install = Install(cp, ensure_helm(), ns, work)
    node, other = f"gpu-{suffix}-a", f"gpu-{suffix}-b"
    for name in (node, other):
        cp.request("POST", "/api/v1/nodes", node_manifest(name, labels={GPU_LABEL: "true"}))
    try:
        local = yaml.safe_load((CHART / "ci" / "local-values.yaml").read_text())
        values = {
            "operator": {"replicas": 1, "podDisruptionBudget": {"enabled": False}},
            "agent": {"backend": "simulated", "simulated": local["agent"]["simulated"]},
        }
        (work / "values.yaml").write_text(yaml.safe_dump(values))
        install.helm_run("install", install.release, str(CHART), "--values", str(work / "values.yaml"))
        deployment, daemonset = install.workload("Deployment"), install.workload("DaemonSet")
        agent_sa = daemonset["spec"]["template"]["spec"]["serviceAccountName"]
        agent_pod = wait_until(lambda: install.daemon_pod(node), 60, "the agent Pod bound to its node")
        agent_config = install.token_kubeconfig(agent_sa, agent_pod)
        agent_unbound = install.token_kubeconfig(agent_sa)

        container = daemonset["spec"]["template"]["spec"]["containers"][0]
        inventory = work / "inventory.yaml"
        config_map = next(
            v["configMap"]["name"]
            for v in daemonset["spec"]["template"]["spec"]["volumes"]
            if "configMap" in v
        )
        inventory.write_text(
            cp.request("GET", f"/api/v1/namespaces/{ns}/configmaps/{config_map}")["data"]["inventory.yaml"]
        )
        args = [
            a if not a.startswith("--inventory=") else f"--inventory={inventory}" for a in container["args"]
        ]
        env = {**downward_env(container, ns, node), "KUBECONFIG": str(agent_config)}
        install.start(LocalProcess(args, log_file=work / "agent.log", env={**os.environ, **env}))

        operator_container = deployment["spec"]["template"]["spec"]["containers"][0]
        operator_config = install.token_kubeconfig(
            deployment["spec"]["template"]["spec"]["serviceAccountName"]
        )
        ports = {p["name"]: free_port() for p in operator_container["ports"]}
        install.start(
            local_operator(
                operator_container,
                operator_config,
                ports,
                downward_env(operator_container, ns),
                work / "op.log",
            )
        )

        def ready() -> bool:
            install.alive()
            metrics = scrape_metrics(ports["metrics"])
            slices = cp.request("GET", f"{OURS}/resourceslices")["items"]
            return (
                metrics.get("dra_operator_leader") == 1.0
                and metrics.get("dra_operator_webhook_configured") == 1.0
                and any(s["spec"].get("nodeName") == node for s in slices)
            )

        wait_until(ready, 120, f"the operator leading and the agent's slice published\n{install.logs()}")
        cp.request("POST", f"{OURS}/deviceclasses", _device_class(f"any-{suffix}"))
        template = {
            "apiVersion": "resource.dra-operator.io/v1",
            "kind": "ResourceClaimTemplate",
            "metadata": {"name": "one-gpu"},
            "spec": {"spec": {"devices": {"requests": [
                {"name": "gpu", "exactly": {"deviceClassName": f"any-{suffix}"}}
            ]}}},
        }  # fmt: skip
        cp.request("POST", f"{OURS}/namespaces/{work_ns}/resourceclaimtemplates", template)
        yield Setup(cp, install, node, other, agent_config, agent_unbound, work_ns)
    finally:
        for process in install.processes:
            process.stop()
        with contextlib.suppress(Exception):
            install.helm_run("uninstall", install.release, "--no-hooks", "--wait", "--timeout=60s")
        for path in (
            f"{OURS}/deviceclasses/any-{suffix}",
            *(f"/api/v1/nodes/{n}" for n in (node, other)),
            *(f"/api/v1/namespaces/{n}" for n in (ns, work_ns)),
        ):
            with contextlib.suppress(ApiError):
                cp.request("DELETE", path)
        for item in cp.request("GET", f"{OURS}/resourceslices")["items"]:
            if item["spec"].get("nodeName") in (node, other):
                with contextlib.suppress(ApiError):
                    cp.request("DELETE", f"{OURS}/resourceslices/{item['metadata']['name']}")


def _device_class(name: str) -> Json:
    return {
        "apiVersion": "resource.dra-operator.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": name},
        "spec": {"selectors": [{"cel": {"expression": 'device.driver == "driver.example.com"'}}]},
    }


def plain_pod(name: str, env: list[Json], annotations: dict[str, str] | None = None) -> Json:
    pod: Json = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": "registry.invalid/noop:1", "env": env}]},
    }
    if annotations:
        pod["metadata"]["annotations"] = annotations
    return pod


ENV_MESSAGE = "NVIDIA_VISIBLE_DEVICES and DRA_<CLAIM>_DEVICES are set by dra-operator"


# ------------------------------------------------------------------------------- device env at create


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ([{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}], True),
        ([{"name": "NVIDIA_VISIBLE_DEVICES", "value": "GPU-0f3c"}], True),
        ([{"name": "NVIDIA_VISIBLE_DEVICES", "value": ""}], True),
        ([{"name": "DRA_GPU_DEVICES", "value": "driver.example.com/n/gpu-0"}], True),
        (
            [
                {
                    "name": "NVIDIA_VISIBLE_DEVICES",
                    "valueFrom": {"configMapKeyRef": {"name": "gpus", "key": "uuids"}},
                }
            ],
            True,
        ),
        ([{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}], False),
        ([{"name": "NVIDIA_VISIBLE_DEVICES", "value": "none"}], False),
        ([{"name": "CUDA_VISIBLE_DEVICES", "value": "0"}], False),
    ],
    ids=["all", "uuid", "empty", "dra-literal", "from-configmap", "void", "none", "unrelated"],
)
def test_a_pod_without_claims_cannot_set_device_env(setup: Setup, env: list[Json], refused: bool) -> None:
    code, output = setup.dry_run(plain_pod("forger", env))
    if refused:
        assert code != 0 and ENV_MESSAGE in output, output
    else:
        assert code == 0, output


def test_workload_templates_and_other_containers_cannot_set_device_env(setup: Setup) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "forger"},
        "spec": {
            "selector": {"matchLabels": {"app": "f"}},
            "template": {
                "metadata": {"labels": {"app": "f"}},
                "spec": plain_pod("x", [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}])["spec"],
            },
        },
    }
    code, output = setup.dry_run(deployment)
    assert code != 0 and ENV_MESSAGE in output, output
    # A Pod with claims: its claim container gets the webhook's env (allowed), a sidecar that uses no claim
    # may not set NVIDIA_VISIBLE_DEVICES=all itself.
    pod = in_claim_form(
        claim_pod("mixed", [{"name": "gpu", "resourceClaimTemplateName": "one-gpu"}]), setup.cp.release.minor
    )
    pod["spec"]["containers"].append(
        {"name": "sidecar", "image": "registry.invalid/noop:1",
         "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]}
    )  # fmt: skip
    code, output = setup.dry_run(pod)
    assert code != 0 and ENV_MESSAGE in output, output
    pod["spec"]["containers"].pop()
    code, output = setup.dry_run(pod)
    assert code == 0, f"a Pod with claims, as the webhook mutates it, must pass: {output}"
    # The release's own namespace is exempt: the agent sets NVIDIA_VISIBLE_DEVICES for NVML.
    code, output = setup.dry_run(
        plain_pod("agent-like", [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]), setup.install.ns
    )
    assert code == 0, output


def test_device_annotations_and_managed_label_cannot_be_set_at_create(setup: Setup) -> None:
    reads = [{"name": "DRA_GPU_DEVICES", "valueFrom": {"fieldRef": {
        "fieldPath": f"metadata.annotations['{names.devices_annotation('gpu', None)}']"}}}]  # fmt: skip
    forged = plain_pod("forger", reads, {names.devices_annotation("gpu", None): "driver.example.com/n/gpu-0"})
    code, output = setup.dry_run(forged)
    assert code != 0 and "cannot be set at creation" in output, output
    nvidia = plain_pod("forger", [], {names.nvidia_annotation("main"): "GPU-0f3c"})
    code, output = setup.dry_run(nvidia)
    assert code != 0 and "cannot be set at creation" in output, output
    labelled = plain_pod("forger", [])
    labelled["metadata"]["labels"] = {names.MANAGED_LABEL: names.MANAGED_VALUE}
    code, output = setup.dry_run(labelled)
    assert code != 0 and "cannot be set by hand" in output, output


# ------------------------------------------------------------------------- updates by anyone else


def test_only_the_operator_changes_device_annotations_labels_and_the_gate(
    setup: Setup, wait_for: WaitFor
) -> None:
    cp, ns = setup.cp, setup.work_ns
    pods = f"/api/v1/namespaces/{ns}/pods"
    minor = cp.release.minor
    allocated = claim_pod("allocated", [{"name": "gpu", "resourceClaimTemplateName": "one-gpu"}])
    cp.request("POST", pods, in_claim_form(allocated, minor))
    pod = wait_for(
        lambda: (lambda p: p if not gated(p) else None)(cp.request("GET", f"{pods}/allocated")),
        timeout=60,
        message="the operator to allocate and ungate (its own writes pass the policy)",
    )
    key = names.devices_annotation("gpu", None)
    assert pod["metadata"]["annotations"][key].startswith("driver.example.com/")

    code, output = setup.kubectl("annotate", "--overwrite", "-n", ns, "pod/allocated", f"{key}=d/p/stolen")
    assert code != 0 and "written only by dra-operator" in output, output
    code, output = setup.kubectl("annotate", "-n", ns, "pod/allocated", f"{names.PREFIX}devices.extra=x")
    assert code != 0 and "written only by dra-operator" in output, output
    code, output = setup.kubectl("label", "--overwrite", "-n", ns, "pod/allocated", f"{names.MANAGED_LABEL}-")
    assert code != 0 and "written only by dra-operator" in output, output
    code, output = setup.kubectl("annotate", "-n", ns, "pod/allocated", "team=ml")  # not ours: fine
    assert code == 0, output

    # A Pod that waits (its template does not exist yet): removing the gate by hand is refused.
    waiting = claim_pod("waiting", [{"name": "gpu", "resourceClaimTemplateName": "later"}])
    cp.request("POST", pods, in_claim_form(waiting, minor))
    waiting = cp.request("GET", f"{pods}/waiting")
    assert gated(waiting)
    patch = json.dumps([{"op": "remove", "path": "/spec/schedulingGates"}])
    code, output = setup.kubectl("patch", "-n", ns, "pod/waiting", "--type=json", "-p", patch)
    assert code != 0 and "removed by hand, the Pod would run without its devices" in output, output
    assert gated(cp.request("GET", f"{pods}/waiting"))
    for name in ("allocated", "waiting"):
        cp.request(
            "DELETE", f"{pods}/{name}", {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0}
        )


# ------------------------------------------------------------------------------------- adminAccess


ADMIN_MESSAGE = (
    "admin access to devices requires the `resource.kubernetes.io/admin-access: true` label on the "
    "containing namespace"
)


def _admin_claim(api_version: str) -> Json:
    return {
        "apiVersion": api_version,
        "kind": "ResourceClaim",
        "metadata": {"name": "admin"},
        "spec": {"devices": {"requests": [
            {"name": "gpu", "exactly": {"deviceClassName": "any", "adminAccess": True}}
        ]}},
    }  # fmt: skip


def test_admin_access_follows_the_namespace_label_rule_as_kubernetes_does(setup: Setup) -> None:
    ours = _admin_claim("resource.dra-operator.io/v1")
    code, output = setup.dry_run(ours)
    assert code != 0 and ADMIN_MESSAGE in output, output
    builtin_dra = setup.cp.release.minor >= 34  # resource.k8s.io/v1 served, to compare the message with
    if builtin_dra:
        code, builtin = setup.dry_run(_admin_claim("resource.k8s.io/v1"))
        assert code != 0 and ADMIN_MESSAGE in builtin, f"Kubernetes says it differently now: {builtin}"
    template = {
        "apiVersion": "resource.dra-operator.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "admin"},
        "spec": {"spec": ours["spec"]},
    }
    code, output = setup.dry_run(template)
    assert code != 0 and ADMIN_MESSAGE in output, output

    admin_ns = f"admins-{uuid.uuid4().hex[:5]}"
    setup.cp.request(
        "POST",
        "/api/v1/namespaces",
        {"metadata": {"name": admin_ns, "labels": {"resource.kubernetes.io/admin-access": "true"}}},
    )
    try:
        for obj in (ours, template, *([_admin_claim("resource.k8s.io/v1")] if builtin_dra else [])):
            code, output = setup.dry_run(obj, admin_ns)
            assert code == 0, output
    finally:
        setup.cp.request("DELETE", f"/api/v1/namespaces/{admin_ns}")


# ------------------------------------------------------------------------------- the agent's slices


def test_an_agent_writes_only_its_own_nodes_slices(setup: Setup) -> None:
    cp = setup.cp
    foreign = gpu_slice_manifest(setup.other, {"gpu-0": "64Gi"})
    code, output = setup.kubectl("create", "-f", "-", input=json.dumps(foreign), config=setup.agent_config)
    assert code != 0 and f"the agent on node {setup.node} may write only" in output, output

    # Another node's slice (published by its own agent; the admin stands in for it here).
    cp.request("POST", f"{OURS}/resourceslices", foreign)
    name = foreign["metadata"]["name"]
    code, output = setup.kubectl("delete", f"resourceslices.resource.dra-operator.io/{name}",
                                 config=setup.agent_config)  # fmt: skip
    assert code != 0 and "may write only" in output, output

    def replaced(change: Callable[[Json], None]) -> tuple[int, str]:
        for _ in range(
            5
        ):  # the operator writes slices' status (device counts): a read-modify-write may conflict
            changed = cp.request("GET", f"{OURS}/resourceslices/{name}")
            change(changed["spec"])
            code, output = setup.kubectl(
                "replace", "-f", "-", input=json.dumps(changed), config=setup.agent_config
            )
            if "(Conflict)" not in output:
                break
        return code, output

    # Changing its devices: refused by the policy. "Adopting" it (our node's name) would publish devices on
    # our node: the CRD refuses that for anyone, as Kubernetes does (a slice's nodeName is immutable).
    code, output = replaced(lambda spec: spec.update(devices=[{"name": "gpu-x"}]))
    assert code != 0 and "may write only" in output, output
    code, output = replaced(lambda spec: spec.update(nodeName=setup.node))
    assert code != 0 and "nodeName is immutable" in output, output

    # Its own node: fine (the agent process published it already); and a token naming no node is refused.
    mine = gpu_slice_manifest(setup.node, {"gpu-9": "64Gi"}, name=f"{setup.node}-extra")
    code, output = setup.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(mine),
                                 config=setup.agent_config)  # fmt: skip
    assert code == 0, output
    code, output = setup.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(mine),
                                 config=setup.agent_unbound)  # fmt: skip
    assert code != 0 and "names none" in output, output
    cp.request("DELETE", f"{OURS}/resourceslices/{name}")
