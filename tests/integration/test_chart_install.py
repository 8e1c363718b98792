"""The Helm chart on the real control plane.

1. Every value set's rendered manifests pass the API server's own validation (server-side dry-run), and the
   Pod Security admission finds the workloads `restricted` (only the documented hostPath exception warns).
2. One real `helm install`, after which the operator (two replicas) and one agent per device node run from
   this checkout in place of the image: with the arguments and environment of the installed Deployment and
   DaemonSet, authenticated as the chart's ServiceAccounts with tokens from the TokenRequest API, so the
   chart's RBAC is what allows or refuses every call. Then the seed walkthrough works, and `helm uninstall`
   leaves no webhook configuration behind.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import SEED, get_or_none, seed, token_kubeconfig

from dra_operator.admission import names
from dra_operator.controlplane import ApiError, ControlPlane
from dra_operator.operator.local import (
    LocalOperator,
    LocalProcess,
    ProcessExited,
    free_port,
    metrics_page,
    scrape_metrics,
)
from dra_operator.tools.helm import chart_dir, ensure_helm, isolated_env, run_helm, template
from dra_operator.tools.monitoring import (
    chart_rule,
    ensure_promtool,
    prometheus_operator_crds,
    run_rule_tests,
)

CHART = chart_dir()
VALUE_SETS: dict[str, list[Path]] = {"default": []} | {
    path.name.removesuffix("-values.yaml"): [path] for path in sorted((CHART / "ci").glob("*-values.yaml"))
}
# The API group of another project's CRDs that this control plane does not serve (cert-manager's). The
# Prometheus Operator's CRDs of the kinds the chart renders are installed for the dry run (`monitoring_crds`).
FOREIGN_GROUPS = {"cert-manager.io"}
OURS = "/apis/resource.dra-operator.io/v1"
# The label GPU Feature Discovery puts on GPU nodes, which the chart's default agent nodeSelector requires.
GPU_LABEL = "nvidia.com/gpu.present"
Json = dict[str, Any]
WaitFor = Callable[..., Any]


@pytest.fixture(scope="module")
def helm() -> Path:
    return ensure_helm()


@pytest.fixture(scope="module")
def monitoring_crds(control_plane: ControlPlane) -> Iterator[None]:
    """The Prometheus Operator's ServiceMonitor and PrometheusRule CRDs, served while this module runs."""
    files = prometheus_operator_crds()
    args = [arg for path in files for arg in ("-f", str(path))]
    control_plane.kubectl("apply", "--server-side", "--field-manager=chart-tests", *args)
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", *args)
    try:
        yield
    finally:
        control_plane.kubectl("delete", "--wait=false", "--ignore-not-found", *args)


@pytest.fixture(scope="module")
def users_namespaces(control_plane: ControlPlane) -> Iterator[Callable[[str], None]]:
    """Makes a namespace of the chart's user (one a value set names, e.g. in watchNamespaces) unless it exists
    (`default` does); the ones made are deleted when this module is done."""
    made: set[str] = set()

    def make(name: str) -> None:
        if name in made or get_or_none(control_plane, f"/api/v1/namespaces/{name}") is not None:
            return
        control_plane.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
        made.add(name)

    try:
        yield make
    finally:
        for name in made:
            with contextlib.suppress(ApiError):
                control_plane.request("DELETE", f"/api/v1/namespaces/{name}")


def series_of(text: str, labels: str) -> list[dict[str, str]]:
    """promtool input series from a /metrics page, each sample with `labels` added and held for an hour.
    Values are written without exponents, whose signs promtool's `a+bxn` notation would read as steps."""
    series = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        metric, brace, rest = name.partition("{")
        selector = f"{metric}{{{rest[:-1]},{labels}}}" if brace else f"{metric}{{{labels}}}"
        series.append({"series": selector, "values": f"{float(value):.9f}x60"})
    return series


def alerts_stay_quiet(install: Install, scrapes: dict[str, str]) -> None:
    """The chart's PrometheusRule for this release, unit-tested with promtool over the scraped series: no
    alert fires in 20 minutes of them. The exposition itself passes promtool's lint."""
    promtool = ensure_promtool()
    for text in scrapes.values():
        linted = subprocess.run(
            [str(promtool), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
        )
        assert linted.returncode == 0, linted.stdout + linted.stderr
    rule = chart_rule(install.release, install.ns, install.helm)
    alerts = [r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]]
    services = install.cp.request("GET", f"/api/v1/namespaces/{install.ns}/services")["items"]
    job = next(s["metadata"]["name"] for s in services if s["spec"]["ports"][0]["name"] == "metrics")
    series = [
        s
        for pod, text in scrapes.items()
        for s in series_of(text, f'job="{job}",namespace="{install.ns}",pod="{pod}"')
    ]
    assert any(s["series"].startswith("dra_operator_leader{") for s in series)
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [{"eval_time": "20m", "alertname": a, "exp_alerts": []} for a in alerts],
            }
        ],
    }
    result = run_rule_tests(rule, tests, install.work, promtool)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------- 1. dry-run


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_chart_passes_server_side_dry_run(
    name: str,
    helm: Path,
    control_plane: ControlPlane,
    namespace: str,
    monitoring_crds: None,
    users_namespaces: Callable[[str], None],
) -> None:
    control_plane.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}",
        {"metadata": {"labels": {"pod-security.kubernetes.io/warn": "restricted"}}},
        content_type="application/merge-patch+json",
    )
    objects = template(release=f"dry-{name}", namespace=namespace, values_files=VALUE_SETS[name], helm=helm)
    foreign = [o for o in objects if o["apiVersion"].split("/")[0] in FOREIGN_GROUPS]
    checked = [o for o in objects if o not in foreign]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in VALUE_SETS[name]:
        text = path.read_text()
        values["webhook"] = {**values["webhook"], **(yaml.safe_load(text).get("webhook") or {})}
        values["metrics"] = {**values["metrics"], **(yaml.safe_load(text).get("metrics") or {})}
    expect_foreign = values["webhook"]["certManager"]["enabled"]
    assert bool(foreign) == bool(expect_foreign), "only cert-manager objects are left unchecked"
    monitoring = {o["kind"] for o in checked if o["apiVersion"].startswith("monitoring.coreos.com/")}
    assert monitoring == {
        kind
        for kind, key in (("ServiceMonitor", "serviceMonitor"), ("PrometheusRule", "prometheusRule"))
        if values["metrics"][key]["enabled"]
    }
    # helm test's dry-run Role lives in a namespace of the user's (the first watched one, in the nvml set).
    for other in sorted({o["metadata"].get("namespace") or namespace for o in checked} - {namespace}):
        users_namespaces(other)
    # A bare Pod (helm test's) is admitted only with its ServiceAccount in place, which a dry run never makes.
    for pod in (o for o in checked if o["kind"] == "Pod"):
        account = {"metadata": {"name": pod["spec"]["serviceAccountName"]}}
        control_plane.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", account)
    result = control_plane.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=chart-dry-run",
        "--dry-run=server",
        "-f",
        "-",
        input=yaml.safe_dump_all(checked),
        check=False,
    )
    assert result.returncode == 0, f"the API server refused the rendered chart:\n{result.stderr}"
    applied = [line for line in result.stdout.splitlines() if "(server dry run)" in line]
    assert len(applied) == len(checked), result.stdout
    warnings = [line for line in result.stderr.splitlines() if "PodSecurity" in line]
    if (
        name == "hostlib"
    ):  # the documented exception: NVML from a hostPath on nodes without the NVIDIA runtime
        assert warnings and all("hostPath" in line for line in warnings), result.stderr
    elif name == "deviceplugin":  # the documented exception: root and the kubelet's device-plugin directory
        assert warnings, result.stderr
        for line in warnings:
            assert "hostPath" in line and "runAsNonRoot" in line and "runAsUser" in line, line
            assert "privileged" not in line and "capabilities" not in line, line
    else:
        assert not warnings, f"not restricted:\n{result.stderr}"


# ------------------------------------------------------------------------------ 2. install and run it


class Install:
    """A helm release on the control plane plus the processes standing in for its Pods."""

    def __init__(self, cp: ControlPlane, helm: Path, namespace: str, work: Path) -> None:
        self.cp, self.helm, self.ns, self.work = cp, helm, namespace, work
        self.release = f"chart-{uuid.uuid4().hex[:6]}"
        self.processes: list[LocalProcess] = []
        self.helm_env = isolated_env(cp.kubeconfig, work)

    def helm_run(self, *args: str) -> str:
        return run_helm([*args, "--namespace", self.ns], helm=self.helm, env=self.helm_env)

    def get(self, path: str) -> Json | None:
        return get_or_none(self.cp, path)

    def workload(self, kind: str) -> Json:
        plural = {"Deployment": "deployments", "DaemonSet": "daemonsets"}[kind]
        items = self.cp.request("GET", f"/apis/apps/v1/namespaces/{self.ns}/{plural}")["items"]
        (found,) = [
            i for i in items if i["metadata"]["labels"].get("app.kubernetes.io/instance") == self.release
        ]
        return found

    def token_kubeconfig(self, service_account: str, pod: Json | None = None) -> Path:
        """A kubeconfig authenticating as the ServiceAccount (a TokenRequest: `kubectl create token`); bound
        to `pod` when given, as the kubelet's projected token is, so it names the Pod's node."""
        bound = []
        if pod is not None:
            meta = pod["metadata"]
            bound = ["--bound-object-kind=Pod", f"--bound-object-name={meta['name']}",
                     f"--bound-object-uid={meta['uid']}"]  # fmt: skip
        path = (
            self.work / f"{service_account}-{(pod or {}).get('spec', {}).get('nodeName', 'any')}.kubeconfig"
        )
        return token_kubeconfig(self.cp, service_account, self.ns, path, *bound)

    def daemon_pod(self, node: str) -> Json | None:
        """The DaemonSet's Pod bound to `node` (it never runs here: the nodes are fake), or None yet."""
        for pod in self.cp.request("GET", f"/api/v1/namespaces/{self.ns}/pods")["items"]:
            owners = [o["kind"] for o in pod["metadata"].get("ownerReferences") or []]
            if "DaemonSet" in owners and pod["spec"].get("nodeName") == node:
                return dict(pod)
        return None

    def can(self, kubeconfig: Path, *args: str) -> bool:
        result = self.cp.kubectl(f"--kubeconfig={kubeconfig}", "auth", "can-i", *args, check=False)
        return result.stdout.strip() == "yes"

    def start(self, process: LocalProcess) -> LocalProcess:
        self.processes.append(process.start())
        return process

    def alive(self) -> None:
        """Fail the test, with its log's tail, if one of the processes has exited."""
        for process in self.processes:
            try:
                process.check()
            except ProcessExited as exited:
                pytest.fail(str(exited), pytrace=False)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log()}" for p in self.processes)


def local_operator(
    container: Json, kubeconfig: Path, ports: dict[str, int], env: dict[str, str], log_file: Path
) -> LocalOperator:
    """The installed container's `run` with its args, with what only makes sense inside the cluster swapped
    for loopback: the API server here reaches the webhook at https://127.0.0.1 (not the Service), with a
    certificate the operator makes for that address (not the chart's, which names the Service); ports are
    free ones. LocalOperator adds --kubeconfig and the webhook and metrics hosts and ports."""
    command, *flags = container["args"]
    if command != "run":
        raise ValueError(f"the operator container runs {command!r}, not `run`")
    in_cluster_only = ("--webhook-service=", "--tls-cert-file=", "--tls-key-file=", "--tls-ca-file=",
                       "--liveness=", "--metrics-port=", "--webhook-port=")  # fmt: skip
    (liveness,) = [a.split("=", 1)[1] for a in flags if a.startswith("--liveness=")]
    path = liveness.split("/", 3)[3]
    return LocalOperator(
        kubeconfig,
        webhook_port=ports["webhook"],
        metrics_port=ports["metrics"],
        extra_args=[
            *(a for a in flags if not a.startswith(in_cluster_only)),
            f"--liveness=http://127.0.0.1:{ports['health']}/{path}",
        ],
        env={**os.environ, **env},
        log_file=log_file,
        name=log_file.stem,
    )


def probe_ok(container: Json, probe: str, ports: dict[str, int]) -> bool:
    """Do what the kubelet does with the container's httpGet probe, against the local process."""
    http = container[probe]["httpGet"]
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{ports[http['port']]}{http['path']}", timeout=2
        ) as reply:
            return bool(200 <= reply.status < 400)
    except OSError:
        return False


def downward_env(container: Json, namespace: str, node: str | None = None) -> dict[str, str]:
    """The container's env, with downward-API values filled in as the kubelet would."""
    fields = {"metadata.namespace": namespace, "metadata.name": f"local-{uuid.uuid4().hex[:5]}"}
    if node is not None:
        fields["spec.nodeName"] = node
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def claim_pod(name: str, claims: list[Json]) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "registry.invalid/noop:1",
                    "resources": {"claims": [{"name": c["name"]} for c in claims]},
                }
            ],
            "resourceClaims": claims,
        },
    }


def gated(pod: Json) -> bool:
    return any(g.get("name") == names.SCHEDULING_GATE for g in pod["spec"].get("schedulingGates") or [])


def allocation_node(claim: Json | None) -> str | None:
    """The node an allocated claim's nodeSelector names (node-local devices), else None."""
    allocation = ((claim or {}).get("status") or {}).get("allocation")
    if not allocation:
        return None
    for term in (allocation.get("nodeSelector") or {}).get("nodeSelectorTerms", []):
        for expression in term.get("matchFields", []) + term.get("matchExpressions", []):
            if expression.get("values"):
                return str(expression["values"][0])
    return None


@pytest.fixture
def install(control_plane: ControlPlane, helm: Path, namespace: str, tmp_path: Path) -> Iterator[Install]:
    setup = Install(control_plane, helm, namespace, tmp_path)
    yield setup
    for process in setup.processes:
        process.stop()
    with contextlib.suppress(Exception):
        setup.helm_run("uninstall", setup.release, "--no-hooks", "--wait", "--timeout=60s")


def test_helm_install_then_seed_walkthrough_as_the_charts_service_accounts(
    install: Install,
    control_plane: ControlPlane,
    make_node: Callable[..., Json],
    wait_for: WaitFor,
) -> None:
    cp, ns = control_plane, install.ns
    local = yaml.safe_load((CHART / "ci" / "local-values.yaml").read_text())
    # The defaults (two replicas, leader election, PDB, agents on GPU nodes) with the simulated backend.
    values = {"agent": {"backend": "simulated", "simulated": local["agent"]["simulated"]}}
    values_file = install.work / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    suffix = uuid.uuid4().hex[:5]
    gpu_nodes = [f"gpu-{suffix}-a", f"gpu-{suffix}-b"]
    for node in gpu_nodes:
        make_node(node, labels={GPU_LABEL: "true"})
    make_node(f"cpu-{suffix}")  # no GPUs: the DaemonSet must not select it

    # ---- helm install (real: CRDs from crds/, every template, lookup against the cluster, NOTES) ----
    notes = install.helm_run("install", install.release, str(CHART), "--values", str(values_file))
    assert "kubectl get deviceclasses.resource.dra-operator.io" in notes
    assert "set agent.devicePlugin.enabled=true" in notes and "ValidatingAdmissionPolicies refuse" in notes
    assert f"dra-operator check -n <your namespace> --lease {ns}/" in notes
    assert f"helm test {install.release} -n {ns}" in notes
    deployment = install.workload("Deployment")
    daemonset = install.workload("DaemonSet")
    assert deployment["spec"]["replicas"] == 2
    wait_for(
        lambda: (
            (install.workload("DaemonSet").get("status") or {}).get("desiredNumberScheduled")
            == len(gpu_nodes)
        ),
        timeout=60,
        message="the DaemonSet controller to place one agent per GPU node (and none on the CPU node)",
    )
    webhook_name = next(
        a.split("=", 1)[1]
        for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        if a.startswith("--webhook-config-name=")
    )
    webhook_path = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{webhook_name}"
    assert install.get(webhook_path) is not None, "the chart creates the (empty) webhook configuration"

    # ---- credentials: the chart's ServiceAccounts, through the TokenRequest API ----
    operator_config = install.token_kubeconfig(deployment["spec"]["template"]["spec"]["serviceAccountName"])
    agent_config = install.token_kubeconfig(daemonset["spec"]["template"]["spec"]["serviceAccountName"])
    assert install.can(operator_config, "patch", "pods", "--all-namespaces")
    assert install.can(operator_config, "update", "resourceclaims.resource.dra-operator.io/status", "-A")
    assert not install.can(operator_config, "get", "secrets", "-n", ns)
    assert not install.can(operator_config, "create", "resourceslices.resource.dra-operator.io")
    assert install.can(agent_config, "create", "resourceslices.resource.dra-operator.io")
    assert not install.can(agent_config, "list", "pods", "--all-namespaces")

    # ---- the agents, one per GPU node, as the DaemonSet would run them ----
    agent_container = daemonset["spec"]["template"]["spec"]["containers"][0]
    config_map = next(
        v["configMap"]["name"] for v in daemonset["spec"]["template"]["spec"]["volumes"] if "configMap" in v
    )
    inventory = install.work / "inventory.yaml"
    inventory.write_text(
        cp.request("GET", f"/api/v1/namespaces/{ns}/configmaps/{config_map}")["data"]["inventory.yaml"]
    )
    for node in gpu_nodes:
        args = [
            a if not a.startswith("--inventory=") else f"--inventory={inventory}"
            for a in agent_container["args"]
        ]
        # The token the kubelet would mount into this node's agent Pod: bound to it, naming the node, which
        # the chart's agent-slices policy requires.
        pod = wait_for(lambda n=node: install.daemon_pod(n), timeout=60, message=f"the agent Pod on {node}")
        config = install.token_kubeconfig(daemonset["spec"]["template"]["spec"]["serviceAccountName"], pod)
        env = {**downward_env(agent_container, ns, node), "KUBECONFIG": str(config)}
        log_file = install.work / f"agent-{node}.log"
        install.start(LocalProcess(args, log_file=log_file, env={**os.environ, **env}))

    def published() -> bool:
        install.alive()
        slices = cp.request("GET", f"{OURS}/resourceslices")["items"]
        by_node = {s["spec"].get("nodeName"): len(s["spec"]["devices"]) for s in slices}
        return all(by_node.get(node) == local["agent"]["simulated"]["inventory"]["pools"][0]["gpus"]["count"]
                   for node in gpu_nodes)  # fmt: skip

    wait_for(published, timeout=60, message=f"each agent to publish its node's slice\n{install.logs()}")

    # ---- the operator: two replicas, one leading ----
    operator_container = deployment["spec"]["template"]["spec"]["containers"][0]
    replicas: list[dict[str, int]] = []
    for index in range(deployment["spec"]["replicas"]):
        ports = {p["name"]: free_port() for p in operator_container["ports"]}
        replicas.append(ports)
        env = downward_env(operator_container, ns)
        log_file = install.work / f"operator-{index}.log"
        install.start(local_operator(operator_container, operator_config, ports, env, log_file))

    def one_leader_all_ready() -> bool:
        states = []
        install.alive()
        for ports in replicas:
            m = scrape_metrics(ports["metrics"])
            states.append((m.get("dra_operator_ready"), m.get("dra_operator_leader")))
        return all(ready == 1.0 for ready, _ in states) and sorted(leader for _, leader in states) == [
            0.0,
            1.0,
        ]

    wait_for(one_leader_all_ready, timeout=120, message=f"both replicas ready, one leading\n{install.logs()}")
    for ports in replicas:  # the chart's probes answer on the ports and paths it names
        for probe in ("livenessProbe", "readinessProbe"):
            answers = functools.partial(probe_ok, operator_container, probe, ports)
            wait_for(answers, timeout=30, message=f"{probe} answers")
    lease_name = next(a.split("=", 1)[1] for a in operator_container["args"] if a.startswith("--lease-name="))
    lease = install.get(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{lease_name}")
    assert lease is not None and lease["spec"]["holderIdentity"]
    # The leader fills the configuration after it takes the Lease: wait for that write, do not race it.
    wait_for(
        lambda: bool((install.get(webhook_path) or {}).get("webhooks")),
        timeout=60,
        message=f"the leader to fill the webhook configuration\n{install.logs()}",
    )
    filled = install.get(webhook_path)
    assert filled is not None and filled["webhooks"], "the operator fills the chart's webhook configuration"

    # ---- the seed walkthrough, in a namespace of its own (the operator's is excluded from admission) ----
    work_ns = f"seed-{suffix}"
    cp.request("POST", "/api/v1/namespaces", {"metadata": {"name": work_ns}})

    # `dra-operator check` as the NOTES print it, finding the chart's Lease by its label on its own.
    command = ["check", "--kubeconfig", str(cp.kubeconfig), "-n", work_ns]
    checked = subprocess.run(
        [sys.executable, "-m", "dra_operator.cli", *command], capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"ok    leader   {ns}/{lease_name} held by" in checked.stdout, checked.stdout
    created_class = False
    try:
        if install.get(f"{OURS}/deviceclasses/example-device-class") is None:
            cp.request("POST", f"{OURS}/deviceclasses", seed("deviceclass.yaml"))
            created_class = True
        assert "example-device-class" in cp.kubectl("get", "deviceclasses.resource.dra-operator.io").stdout
        cp.request(
            "POST", f"{OURS}/namespaces/{work_ns}/resourceclaimtemplates", seed("resourceclaimtemplate.yaml")
        )
        cp.request("POST", f"{OURS}/namespaces/{work_ns}/resourceclaims", seed("resourceclaim.yaml"))
        pods = f"/api/v1/namespaces/{work_ns}/pods"

        # A Pod with the template's claim gets its own GPU: claim generated, allocated, Pod ungated, bound.
        own = [{"name": "gpu", "resourceClaimTemplateName": "example-resource-claim-template"}]
        cp.request("POST", pods, claim_pod("own-gpu", own))

        def placed(name: str) -> Json | None:
            pod: Json = cp.request("GET", f"{pods}/{name}")
            return pod if not gated(pod) and pod["spec"].get("nodeName") else None

        def situation() -> str:
            """What the namespace looks like, for a failure message."""
            summary = {
                "pods": [
                    {"name": p["metadata"]["name"], "labels": p["metadata"].get("labels"),
                     "gates": p["spec"].get("schedulingGates"), "node": p["spec"].get("nodeName")}
                    for p in cp.request("GET", pods)["items"]
                ],
                "claims": [
                    {"name": c["metadata"]["name"], "status": c.get("status")}
                    for c in cp.request("GET", f"{OURS}/namespaces/{work_ns}/resourceclaims")["items"]
                ],
                "events": [
                    f"{e['involvedObject'].get('name')}: {e.get('reason')}: {e.get('message')}"
                    for e in cp.request("GET", f"/api/v1/namespaces/{work_ns}/events")["items"]
                ],
            }  # fmt: skip
            return yaml.safe_dump(summary) + install.logs()

        pod = wait_for(lambda: placed("own-gpu"), timeout=90, message=f"own-gpu placed\n{situation()}")
        claims = cp.request("GET", f"{OURS}/namespaces/{work_ns}/resourceclaims")["items"]
        generated = [c for c in claims if c["metadata"]["name"].startswith("own-gpu-gpu-")]
        assert len(generated) == 1 and allocation_node(generated[0]) == pod["spec"]["nodeName"]
        assert generated[0]["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]

        # A Pod of the shared `allocationMode: All` claim lands on the node that holds the claim's devices.
        shared = [{"name": "shared", "resourceClaimName": "example-resource-claim"}]
        cp.request("POST", pods, claim_pod("shared-gpu", shared))
        pod = wait_for(
            lambda: placed("shared-gpu"), timeout=90, message=f"shared-gpu placed\n{install.logs()}"
        )
        claim = cp.request("GET", f"{OURS}/namespaces/{work_ns}/resourceclaims/example-resource-claim")
        assert allocation_node(claim) == pod["spec"]["nodeName"]

        # The seed's Job, unchanged: its Pods need the shared claim's node and one more 64Gi GPU there, which
        # the All claim holds, so they stay gated and the operator explains why with a Warning event.
        job = yaml.safe_load((SEED / "dra-example-job.yaml").read_text())
        cp.request("POST", f"/apis/batch/v1/namespaces/{work_ns}/jobs", job)

        def explained() -> bool:
            events = cp.request("GET", f"/api/v1/namespaces/{work_ns}/events")["items"]
            job_pods = [
                p
                for p in cp.request("GET", pods)["items"]
                if p["metadata"]["name"].startswith("example-dra-job")
            ]
            failed = {e["involvedObject"]["name"] for e in events if e.get("reason") == "AllocationFailed"}
            return bool(job_pods) and all(gated(p) and p["metadata"]["name"] in failed for p in job_pods)

        wait_for(
            explained, timeout=90, message=f"the Job's Pods gated with AllocationFailed\n{install.logs()}"
        )

        # Clean-up as in the walkthrough: generated claims go with their Pods, the shared one is released.
        cp.request("DELETE", f"/apis/batch/v1/namespaces/{work_ns}/jobs/example-dra-job",
                   {"kind": "DeleteOptions", "apiVersion": "v1",
                    "propagationPolicy": "Foreground"})  # fmt: skip
        for name in ("own-gpu", "shared-gpu"):
            cp.request(
                "DELETE",
                f"{pods}/{name}",
                {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0},
            )

        def released() -> bool:
            left = cp.request("GET", f"{OURS}/namespaces/{work_ns}/resourceclaims")["items"]
            return [c["metadata"]["name"] for c in left] == ["example-resource-claim"] and not (
                left[0].get("status") or {}
            ).get("allocation")

        wait_for(
            released,
            timeout=90,
            message=f"generated claims deleted, shared claim deallocated\n{install.logs()}",
        )

        # The chart's alerts, over the replicas' real series as a ServiceMonitor of this release would label
        # them: a working installation raises none.
        scrapes = {f"replica-{i}": metrics_page(ports["metrics"]) for i, ports in enumerate(replicas)}
        alerts_stay_quiet(install, scrapes)
    finally:
        with contextlib.suppress(ApiError):
            cp.request("DELETE", f"/api/v1/namespaces/{work_ns}")
        if created_class:
            with contextlib.suppress(ApiError):
                cp.request("DELETE", f"{OURS}/deviceclasses/example-device-class")

    # ---- helm uninstall removes the webhook configuration the operator filled ----
    for process in install.processes:
        process.stop()
    # Fake nodes run no Pod, so the post-delete hook Job (it withdraws the agents' slices) could never finish
    # here; test_chart_real_nodes.py runs the uninstall with its hook on real nodes.
    install.helm_run("uninstall", install.release, "--no-hooks", "--wait", "--timeout=60s")
    assert install.get(webhook_path) is None
