"""The Helm chart lints and renders for every value set, and what it renders keeps the chart's promises.

Value sets: the defaults plus every charts/dra-operator/ci/*-values.yaml. The expectations are derived from
the values themselves (deep-merged like helm does), not written out, so a new value set needs no new code.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from dra_operator.agent.simulated import parse_inventory
from dra_operator.cli import SUBCOMMANDS
from dra_operator.tools.helm import chart_dir, coalesce_values, ensure_helm, run_helm, template

CHART = chart_dir()
VALUE_SETS: dict[str, list[Path]] = {"default": []} | {
    path.name.removesuffix("-values.yaml"): [path] for path in sorted((CHART / "ci").glob("*-values.yaml"))
}
NAMESPACE = "gpu-system"
RELEASE = "rel"
NAMESPACED_KINDS = {
    "ServiceAccount", "Role", "RoleBinding", "Deployment", "DaemonSet", "Service", "ConfigMap", "Secret",
    "PodDisruptionBudget", "Certificate", "Issuer", "ServiceMonitor", "PrometheusRule", "Lease", "Job",
    "NetworkPolicy", "Pod",
}  # fmt: skip
CLUSTER_KINDS = {
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}


def effective_values(files: list[Path]) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in files:
        values = coalesce_values(values, yaml.safe_load(path.read_text()))
    return values


class Rendered:
    """The objects of one `helm template`, with lookups the checks need."""

    def __init__(self, objects: list[dict[str, Any]], values: dict[str, Any]) -> None:
        self.objects = objects
        self.values = values

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, component: str | None = None) -> dict[str, Any]:
        found = [
            o
            for o in self.of_kind(kind)
            if component is None or o["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ]
        assert len(found) == 1, f"expected one {kind} ({component}), found {len(found)}"
        return found[0]

    def maybe(self, kind: str, component: str) -> dict[str, Any] | None:
        label = "app.kubernetes.io/component"
        found = [o for o in self.of_kind(kind) if o["metadata"]["labels"].get(label) == component]
        return found[0] if found else None

    def workloads(self) -> Iterator[dict[str, Any]]:
        yield from self.of_kind("Deployment")
        yield from self.of_kind("DaemonSet")


def args_of(container: dict[str, Any]) -> dict[str, list[str]]:
    """`--flag=value` and bare `--flag` arguments as {flag: [values]} (a bare flag maps to [""])."""
    parsed: dict[str, list[str]] = {}
    for arg in container.get("args", []):
        if arg.startswith("--"):
            flag, _, value = arg.partition("=")
            parsed.setdefault(flag, []).append(value)
    return parsed


@pytest.fixture(scope="session")
def helm() -> Path:
    return ensure_helm()


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest, helm: Path) -> Rendered:
    files = VALUE_SETS[request.param]
    objects = template(release=RELEASE, namespace=NAMESPACE, values_files=files, helm=helm)
    return Rendered(objects, effective_values(files))


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict(helm: Path, name: str) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    for path in VALUE_SETS[name]:
        args += ["--values", str(path)]
    output = run_helm(args, helm=helm)
    assert "0 chart(s) failed" in output


def test_objects_are_well_formed_and_placed(rendered: Rendered) -> None:
    names: set[tuple[str, str]] = set()
    for obj in rendered.objects:
        kind, meta = obj["kind"], obj["metadata"]
        assert (kind, meta["name"]) not in names, f"duplicate {kind} {meta['name']}"
        names.add((kind, meta["name"]))
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", meta["name"]) and len(meta["name"]) <= 253
        if kind in NAMESPACED_KINDS:
            # Only `helm test`'s right to a dry-run Pod create lives where that Pod is created.
            dry_run = kind in ("Role", "RoleBinding") and meta["name"].endswith("-test-dry-run")
            where = dry_run_namespace(rendered.values) if dry_run else NAMESPACE
            assert meta.get("namespace") == where, f"{kind} {meta['name']} outside the release namespace"
        else:
            assert kind in CLUSTER_KINDS, f"unexpected kind {kind}"
            assert "namespace" not in meta
        if kind != "CustomResourceDefinition":
            assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE
            assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_crds_are_the_repository_crds(rendered: Rendered) -> None:
    shipped = {yaml.safe_load(p.read_text())["metadata"]["name"] for p in (CHART / "crds").glob("*.yaml")}
    assert len(shipped) == 5
    assert {o["metadata"]["name"] for o in rendered.of_kind("CustomResourceDefinition")} == shipped


# --- RBAC -----------------------------------------------------------------------------------------


def rules_of(rendered: Rendered, subject: str) -> list[tuple[dict[str, Any], str | None]]:
    """Every rule granted to ServiceAccount `subject`: (rule, namespace or None for cluster-wide)."""
    granted = []
    for binding in rendered.of_kind("ClusterRoleBinding") + rendered.of_kind("RoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == subject and s["namespace"] == NAMESPACE
                   for s in binding["subjects"]):  # fmt: skip
            continue
        role_kind = binding["roleRef"]["kind"]
        role_name = binding["roleRef"]["name"]
        role = next(r for r in rendered.of_kind(role_kind) if r["metadata"]["name"] == role_name)
        scope = None if binding["kind"] == "ClusterRoleBinding" else binding["metadata"]["namespace"]
        granted += [(rule, scope) for rule in role["rules"]]
    return granted


def allowed(
    rules: list[tuple[dict[str, Any], str | None]], group: str, resource: str, verb: str,
    *, namespace: str | None = None, name: str | None = None,
) -> bool:  # fmt: skip
    """RBAC's evaluation (without wildcards, which the chart must never use)."""
    for rule, scope in rules:
        if scope is not None and scope != namespace:
            continue
        if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]:
            names = rule.get("resourceNames")
            if not names or (name is not None and name in names):
                return True
    return False


def test_rbac_names_every_group_resource_and_verb(rendered: Rendered) -> None:
    for role in rendered.of_kind("ClusterRole") + rendered.of_kind("Role"):
        assert role["rules"], f"{role['metadata']['name']} has no rules"
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert rule.get(field), f"{role['metadata']['name']}: a rule without {field}"
                assert not any("*" in item for item in rule[field]), f"wildcard in {role['metadata']['name']}"
            assert "nonResourceURLs" not in rule
            if "resourceNames" in rule:  # create, list and watch cannot be limited by name: never pretend
                # (except a create by server-side apply, which the API server authorizes with the name: the
                # CRD upgrade hook's, see test_crd_upgrade_hook_may_apply_only_the_charts_crds)
                create_by_apply = rule["resources"] == ["customresourcedefinitions"]
                assert not {"list", "watch", "deletecollection"} & set(rule["verbs"])
                assert create_by_apply or "create" not in rule["verbs"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


def operator_sa(rendered: Rendered) -> str:
    deployment = rendered.one("Deployment", "operator")
    return str(deployment["spec"]["template"]["spec"]["serviceAccountName"])


# (group, resource, verb) the operator needs everywhere, from DESIGN.md's flow.
OPERATOR_NEEDS = [
    ("resource.dra-operator.io", "deviceclasses", "watch"),
    ("resource.dra-operator.io", "resourceslices", "list"),
    ("resource.dra-operator.io", "resourceclaimtemplates", "get"),
    ("resource.dra-operator.io", "resourceclaims", "create"),
    ("resource.dra-operator.io", "resourceclaims", "delete"),
    ("resource.dra-operator.io", "resourceclaims/status", "update"),
    ("", "pods", "watch"),
    ("", "pods", "patch"),
    ("", "pods", "delete"),  # NoExecute device taints evict (as Kubernetes' taint eviction deletes)
    ("", "pods/status", "patch"),
    ("resource.dra-operator.io", "devicetaintrules", "watch"),
    ("resource.dra-operator.io", "devicetaintrules/status", "patch"),
    ("", "nodes", "list"),
    ("", "events", "create"),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "create"),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "create"),
]
# What neither component may do: the least-privilege half.
NOBODY_MAY = [
    ("", "secrets", "list"),
    ("", "secrets", "watch"),
    ("", "pods", "create"),
    ("", "nodes", "patch"),
    ("resource.dra-operator.io", "deviceclasses", "create"),
    ("rbac.authorization.k8s.io", "clusterroles", "create"),
    ("admissionregistration.k8s.io", "validatingadmissionpolicies", "create"),
]


@pytest.mark.parametrize(("group", "resource", "verb"), OPERATOR_NEEDS)
def test_operator_may_what_the_flow_needs(rendered: Rendered, group: str, resource: str, verb: str) -> None:
    assert allowed(rules_of(rendered, operator_sa(rendered)), group, resource, verb)


def test_operator_named_permissions(rendered: Rendered) -> None:
    rules = rules_of(rendered, operator_sa(rendered))
    deployment = rendered.one("Deployment", "operator")
    args = args_of(deployment["spec"]["template"]["spec"]["containers"][0])
    config = args["--webhook-config-name"][0]
    group = "admissionregistration.k8s.io"
    # The chart owns both configurations (empty), so uninstall removes them; the operator fills them in.
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        (shell,) = rendered.of_kind(kind)
        assert shell["metadata"]["name"] == config and shell["webhooks"] == []
        plural = kind.lower() + "s"
        assert allowed(rules, group, plural, "update", name=config)
        assert not allowed(rules, group, plural, "update", name="someone-elses")
    if rendered.values["operator"]["leaderElection"]["enabled"]:
        lease = args["--lease-name"][0]
        coordination = "coordination.k8s.io"
        assert allowed(rules, coordination, "leases", "update", namespace=NAMESPACE, name=lease)
        assert not allowed(rules, coordination, "leases", "update", namespace=NAMESPACE, name="other")
        assert not allowed(rules, coordination, "leases", "update", namespace="kube-system", name=lease)
        # The chart makes the Lease (so uninstall removes it); the operator never creates one.
        (made,) = rendered.of_kind("Lease")
        assert made["metadata"]["name"] == lease and made["metadata"]["namespace"] == NAMESPACE
        assert not allowed(rules, coordination, "leases", "create", namespace=NAMESPACE)
    else:
        assert not rendered.of_kind("Lease")
        assert "--no-leader-election" in args and "--leader-election" not in args
        assert not allowed(rules, "coordination.k8s.io", "leases", "create", namespace=NAMESPACE)
    # The webhook certificate is mounted: the operator reads no Secret through the API, not even its own.
    secret = next(
        v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v
    )
    assert not allowed(rules, "", "secrets", "get", namespace=NAMESPACE, name=secret)


@pytest.mark.parametrize(("group", "resource", "verb"), NOBODY_MAY)
def test_nobody_may(rendered: Rendered, group: str, resource: str, verb: str) -> None:
    for workload in rendered.workloads():
        sa = workload["spec"]["template"]["spec"]["serviceAccountName"]
        assert not allowed(rules_of(rendered, sa), group, resource, verb, namespace=NAMESPACE)


def test_agent_may_publish_its_slices_and_nothing_of_the_operator(rendered: Rendered) -> None:
    agent = rendered.maybe("DaemonSet", "agent")
    if not rendered.values["agent"]["enabled"]:
        assert agent is None
        return
    assert agent is not None
    rules = rules_of(rendered, agent["spec"]["template"]["spec"]["serviceAccountName"])
    for verb in ("list", "watch", "create", "update", "delete"):
        assert allowed(rules, "resource.dra-operator.io", "resourceslices", verb)
    assert allowed(rules, "", "nodes", "get")
    assert not allowed(rules, "resource.dra-operator.io", "resourceclaims", "get")
    assert not allowed(rules, "", "pods", "get")
    assert not allowed(rules, "", "pods", "delete")


def test_workloads_run_as_their_own_bound_service_accounts(rendered: Rendered) -> None:
    accounts = {o["metadata"]["name"] for o in rendered.of_kind("ServiceAccount")}
    for workload in rendered.workloads():
        component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
        sa = workload["spec"]["template"]["spec"]["serviceAccountName"]
        if rendered.values[component]["serviceAccount"]["create"]:
            assert sa in accounts
        else:
            assert sa == rendered.values[component]["serviceAccount"]["name"]
        assert rules_of(rendered, sa), f"{component}'s ServiceAccount {sa} is bound to nothing"
    assert len({w["spec"]["template"]["spec"]["serviceAccountName"] for w in rendered.workloads()}) == len(
        list(rendered.workloads())
    ), "the operator and the agent must not share a ServiceAccount"


# --- Pods -----------------------------------------------------------------------------------------


def test_restricted_security_contexts(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        plugin = workload["kind"] == "DaemonSet" and rendered.values["agent"]["devicePlugin"]["enabled"]
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert not sc.get("privileged")
            # The documented device-plugin exception: root (no capability) for the kubelet's directory.
            assert (sc.get("runAsUser") == 0) == plugin and (sc.get("runAsNonRoot") is False) == plugin
            assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
        for volume in pod.get("volumes", []):
            if plugin and volume["name"] in ("device-plugins", "simulated-devices"):
                assert volume["hostPath"]["path"] in (
                    rendered.values["agent"]["devicePlugin"]["kubeletDir"],
                    rendered.values["agent"]["devicePlugin"]["simulatedDevicesDir"],
                )
                continue
            if "hostPath" in volume:  # only the documented NVML exception, read-only, one file
                assert rendered.values["agent"]["nvml"]["driverLibraryPath"]
                assert volume["hostPath"]["type"] == "File"
                all_mounts = [m for c in pod["containers"] for m in c["volumeMounts"]]
                mounts = [m for m in all_mounts if m["name"] == volume["name"]]
                assert mounts and all(m["readOnly"] for m in mounts)


def test_hook_pods_run_where_the_operator_may(rendered: Rendered) -> None:
    """The CRD upgrade Job, the agent clean-up Job and the `helm test` Pod take the operator's nodeSelector
    and tolerations: on a cluster that keeps the operator on some nodes they must not land elsewhere."""
    operator = rendered.one("Deployment", "operator")["spec"]["template"]["spec"]
    hook_pods = [
        o["spec"]["template"]["spec"] if o["kind"] == "Job" else o["spec"]
        for o in rendered.objects
        if o["kind"] in ("Job", "Pod") and "helm.sh/hook" in (o["metadata"].get("annotations") or {})
    ]
    values = rendered.values
    assert len(hook_pods) == sum(
        bool(on) for on in (values["crds"]["upgrade"], values["agent"]["enabled"], values["test"]["enabled"])
    )
    for pod in hook_pods:
        assert (
            pod.get("nodeSelector", {})
            == operator.get("nodeSelector", {})
            == (values["operator"].get("nodeSelector") or {})
        )
        assert (
            pod.get("tolerations", []) == operator.get("tolerations", []) == values["operator"]["tolerations"]
        )


def test_images_and_pull_settings(rendered: Rendered) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    image = rendered.values["image"]
    expected = f"{image['repository']}:{image['tag'] or chart['appVersion']}"
    for workload in rendered.workloads():
        pod = workload["spec"]["template"]["spec"]
        assert [c["image"] for c in pod["containers"]] == [expected]
        assert pod["containers"][0]["imagePullPolicy"] == image["pullPolicy"]
        assert pod.get("imagePullSecrets", []) == rendered.values["imagePullSecrets"]


def test_operator_deployment(rendered: Rendered) -> None:
    values = rendered.values["operator"]
    deployment = rendered.one("Deployment", "operator")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    args = args_of(container)
    assert container["args"][0] == "run"
    assert spec["replicas"] == values["replicas"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert ("--leader-election" in args) == values["leaderElection"]["enabled"]
    assert args.get("--namespace", []) == values["watchNamespaces"]
    assert args["--metrics-port"] == [str(values["metrics"]["port"])]
    assert args["--webhook-port"] == [str(values["webhook"]["port"])]
    assert args["--liveness"] == [f"http://0.0.0.0:{values['health']['port']}/healthz"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "webhook": values["webhook"]["port"],
        "metrics": values["metrics"]["port"],
        "health": values["health"]["port"],
    }
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts  # the root filesystem is read-only


def mounted_cert_secret(deployment: dict[str, Any]) -> str:
    """The Secret whose files the operator is pointed at with --tls-*-file (all three in one mount)."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = args_of(container)
    files = [Path(args[flag][0]) for flag in ("--tls-cert-file", "--tls-key-file", "--tls-ca-file")]
    assert [f.name for f in files] == ["tls.crt", "tls.key", "ca.crt"]
    assert len({f.parent for f in files}) == 1
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == files[0].parent)
    assert mount["readOnly"] is True
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    return str(volumes[mount["name"]]["secret"]["secretName"])


def test_webhook_service_and_certificate(rendered: Rendered) -> None:
    deployment = rendered.one("Deployment", "operator")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    args = args_of(deployment["spec"]["template"]["spec"]["containers"][0])
    services = {s["metadata"]["name"]: s for s in rendered.of_kind("Service")}
    service_name, _, service_namespace = args["--webhook-service"][0].partition(".")
    assert service_namespace == NAMESPACE
    service = services[service_name]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["webhook"]
    secret_name = mounted_cert_secret(deployment)
    host = f"{service_name}.{NAMESPACE}.svc"
    if not rendered.values["webhook"]["certManager"]["enabled"]:
        assert not rendered.of_kind("Certificate") and not rendered.of_kind("Issuer")
        (secret,) = [s for s in rendered.of_kind("Secret") if s["metadata"]["name"] == secret_name]
        files = {k: base64.b64decode(v) for k, v in secret["data"].items()}
        ca = x509.load_pem_x509_certificate(files["ca.crt"])
        cert = x509.load_pem_x509_certificate(files["tls.crt"])
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        cert.verify_directly_issued_by(ca)  # raises unless ca.crt signed tls.crt
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert host in names.get_values_for_type(x509.DNSName)
        key = serialization.load_pem_private_key(files["tls.key"], password=None)
        assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["checksum/webhook-cert"], "a new certificate must roll the replicas"
        return
    (serving,) = [c for c in rendered.of_kind("Certificate") if c["spec"]["secretName"] == secret_name]
    assert host in serving["spec"]["dnsNames"]
    issuer = rendered.values["webhook"]["certManager"]["issuerRef"]
    if issuer:
        assert serving["spec"]["issuerRef"] == issuer and not rendered.of_kind("Issuer")
        return
    # self-signed root -> CA Certificate -> CA Issuer -> serving Certificate: renewals keep ca.crt.
    issuers = {i["metadata"]["name"]: i["spec"] for i in rendered.of_kind("Issuer")}
    ca_issuer = issuers[serving["spec"]["issuerRef"]["name"]]
    (ca_cert,) = [
        c for c in rendered.of_kind("Certificate") if c["spec"]["secretName"] == ca_issuer["ca"]["secretName"]
    ]
    assert ca_cert["spec"]["isCA"] is True
    assert issuers[ca_cert["spec"]["issuerRef"]["name"]] == {"selfSigned": {}}


def test_metrics_service_monitor_and_disruption_budget(rendered: Rendered) -> None:
    deployment = rendered.one("Deployment", "operator")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    metrics = [s for s in rendered.of_kind("Service") if s["spec"]["ports"][0]["name"] == "metrics"]
    assert len(metrics) == int(rendered.values["metrics"]["service"]["enabled"])
    for service in metrics:
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    monitors = rendered.of_kind("ServiceMonitor")
    assert len(monitors) == int(rendered.values["metrics"]["serviceMonitor"]["enabled"])
    for monitor in monitors:
        assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics[0]["metadata"]["labels"].items()
        wanted = rendered.values["metrics"]["serviceMonitor"]["labels"]
        assert monitor["metadata"]["labels"].items() >= wanted.items()
    budgets = rendered.of_kind("PodDisruptionBudget")
    assert len(budgets) == int(rendered.values["operator"]["podDisruptionBudget"]["enabled"])
    for budget in budgets:
        assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_network_policy_admits_the_webhook_and_the_scrapers_only(rendered: Rendered) -> None:
    """Opt-in: the operator Pods take the webhook port from anywhere and the metrics port from the peers
    given; the ports it names are the container's own (by name, so a port change in values follows)."""
    policies = rendered.of_kind("NetworkPolicy")
    values = rendered.values["operator"]["networkPolicy"]
    assert len(policies) == int(values["enabled"])
    if not policies:
        return
    (policy,) = policies
    deployment = rendered.one("Deployment", "operator")
    pod = deployment["spec"]["template"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    container_ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    webhook, metrics = policy["spec"]["ingress"]
    assert [p["port"] for p in webhook["ports"]] == ["webhook"] and "from" not in webhook
    assert [p["port"] for p in metrics["ports"]] == ["metrics"]
    assert metrics.get("from", []) == values["metricsFrom"]
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} <= container_ports


def test_agent_daemonset(rendered: Rendered) -> None:
    values = rendered.values["agent"]
    agent = rendered.maybe("DaemonSet", "agent")
    if not values["enabled"]:
        assert agent is None and not rendered.of_kind("ConfigMap")
        return
    assert agent is not None
    pod = agent["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = args_of(container)
    assert container["args"][0] == "agent"
    assert args["--backend"] == [values["backend"]]
    default_driver = "driver.example.com" if values["backend"] == "simulated" else "gpu.nvidia.com"
    assert args["--driver"] == [values["driver"] or default_driver]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert pod.get("nodeSelector", {}) == values.get("nodeSelector", {})  # a null in the values removes it
    assert pod.get("tolerations", []) == values["tolerations"]
    assert pod.get("runtimeClassName", "") == values["runtimeClassName"]
    if values["backend"] == "nvml":
        assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == values["nvml"]["visibleDevices"]
        assert "--inventory" not in args and not rendered.of_kind("ConfigMap")
        return
    (config_map,) = rendered.of_kind("ConfigMap")
    inventory_path = Path(args["--inventory"][0])
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == inventory_path.parent)
    assert volumes[mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
    text = config_map["data"][inventory_path.name]
    assert yaml.safe_load(text) == values["simulated"]["inventory"]
    parsed = parse_inventory(text, str(inventory_path))  # the agent's own parser accepts what the chart ships
    assert parsed.pools


def parse_with_cli(args: list[str]) -> argparse.Namespace:
    """Parse a container's args with the real `dra-operator` subcommand parser; fail on any unknown flag."""
    parser = argparse.ArgumentParser(prog=f"dra-operator {args[0]}")
    importlib.import_module(SUBCOMMANDS[args[0]][0]).add_arguments(parser)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return parser.parse_args(args[1:])
    except SystemExit:
        pytest.fail(f"the chart passes flags `dra-operator {args[0]}` does not know: {errors.getvalue()}")


def test_container_args_are_understood_by_the_cli(rendered: Rendered) -> None:
    operator = rendered.one("Deployment", "operator")["spec"]["template"]["spec"]["containers"][0]
    parsed = parse_with_cli(operator["args"])
    values = rendered.values["operator"]
    assert parsed.leader_election == values["leaderElection"]["enabled"]
    assert parsed.namespace == values["watchNamespaces"]
    assert parsed.webhook_port == values["webhook"]["port"]
    assert parsed.metrics_port == values["metrics"]["port"]
    assert parsed.log_level == rendered.values["logLevel"]
    assert parsed.kube_api_qps == values["kubeApi"]["qps"]
    assert parsed.kube_api_burst == values["kubeApi"]["burst"]
    agent = rendered.maybe("DaemonSet", "agent")
    if agent is not None:
        parsed = parse_with_cli(agent["spec"]["template"]["spec"]["containers"][0]["args"])
        assert parsed.backend == rendered.values["agent"]["backend"]
        assert parsed.log_level == rendered.values["logLevel"]


@pytest.mark.parametrize("qps,burst", [(250.5, 40), (1_000_000, 2_000_000)])
def test_the_client_rate_limit_reaches_the_operator(helm: Path, qps: float, burst: int) -> None:
    """Large numbers too: Helm prints a YAML number over a million as 2e+06 unless told it is an integer."""
    values = {"operator": {"kubeApi": {"qps": qps, "burst": burst}}}
    objects = template(release=RELEASE, namespace=NAMESPACE, values=values, helm=helm)
    (operator,) = [o for o in objects if o["kind"] == "Deployment"]
    parsed = parse_with_cli(operator["spec"]["template"]["spec"]["containers"][0]["args"])
    assert (parsed.kube_api_qps, parsed.kube_api_burst) == (qps, burst)


def hooks_of(rendered: Rendered, component: str) -> list[dict[str, Any]]:
    """The Helm hook objects of one component."""
    return [
        o
        for o in rendered.objects
        if "helm.sh/hook" in (o["metadata"].get("annotations") or {})
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]


def test_crd_upgrade_hook_may_apply_only_the_charts_crds(rendered: Rendered) -> None:
    """Before an upgrade a Job applies the image's CRDs (Helm never updates crds/), with RBAC limited to
    this chart's CRDs by name; all of it is deleted once the Job succeeded."""
    hook_objects = hooks_of(rendered, "crds")
    if not rendered.values["crds"]["upgrade"]:
        assert not hook_objects
        return
    assert sorted(o["kind"] for o in hook_objects) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Job",
        "ServiceAccount",
    ]
    for obj in hook_objects:
        annotations = obj["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-upgrade"  # none on rollback: it could lose data
        assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    weight = {o["kind"]: int(o["metadata"]["annotations"]["helm.sh/hook-weight"]) for o in hook_objects}
    assert weight["Job"] > max(weight[k] for k in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding"))
    job = rendered.one("Job", "crds")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert parse_with_cli(container["args"]).apply is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    crds = sorted(o["metadata"]["name"] for o in rendered.of_kind("CustomResourceDefinition"))
    assert [rule for rule, _ in rules_of(rendered, pod["serviceAccountName"])] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["get", "create", "patch"],
            "resourceNames": crds,
        }
    ]


def test_crd_upgrade_hook_can_be_turned_off(helm: Path) -> None:
    off = {"crds": {"upgrade": False}}
    objects = template(release=RELEASE, namespace=NAMESPACE, values=off, helm=helm)
    rendered = Rendered(objects, coalesce_values(effective_values([]), off))
    assert rendered.values["crds"]["upgrade"] is False
    assert not hooks_of(rendered, "crds")
    assert rendered.of_kind("CustomResourceDefinition"), "crds/ are still installed"


def test_agent_cleanup_runs_after_uninstall_with_only_what_it_needs(rendered: Rendered) -> None:
    """A post-delete Job withdraws the agents' slices (owned by Nodes, nothing else removes them)."""
    job = rendered.maybe("Job", "agent-cleanup")
    if not rendered.values["agent"]["enabled"]:
        assert job is None
        return
    assert job is not None
    hook_objects = hooks_of(rendered, "agent-cleanup")
    assert {o["kind"] for o in hook_objects} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Job"}
    for obj in hook_objects:
        annotations = obj["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "post-delete"
        assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]  # nothing of it stays behind
    # RBAC first, then the Job that needs it.
    weight = {o["kind"]: int(o["metadata"]["annotations"]["helm.sh/hook-weight"]) for o in hook_objects}
    assert weight["Job"] > max(weight[k] for k in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding"))
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][:2] == ["agent", "--withdraw-all"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    rules = rules_of(rendered, pod["serviceAccountName"])
    group = "resource.dra-operator.io"
    assert allowed(rules, group, "resourceslices", "list") and allowed(
        rules, group, "resourceslices", "delete"
    )
    for verb in ("create", "update", "patch"):
        assert not allowed(rules, group, "resourceslices", verb)
    assert [rule for rule, _ in rules] == [{"apiGroups": [group], "resources": ["resourceslices"],
                                           "verbs": ["list", "delete"]}]  # fmt: skip


def test_helm_test_runs_the_check_with_rights_that_last_as_long_as_the_test(rendered: Rendered) -> None:
    """`helm test` runs `dra-operator check` in a Pod; its ServiceAccount and RBAC are test hooks made before
    it and deleted when it ends, and grant what the check reads plus a Pod create where its dry run goes."""
    hook_objects = hooks_of(rendered, "test")
    if not rendered.values["test"]["enabled"]:
        assert not hook_objects
        return
    electing = rendered.values["operator"]["leaderElection"]["enabled"]
    roles = ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] + ["Role", "RoleBinding"] * electing
    assert sorted(o["kind"] for o in hook_objects) == sorted(["Pod", "ServiceAccount", *roles])
    for obj in hook_objects:
        annotations = obj["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "test"
        assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]  # nothing of it stays behind
    weights = {o["kind"]: int(o["metadata"]["annotations"]["helm.sh/hook-weight"]) for o in hook_objects}
    assert weights["Pod"] > max(w for kind, w in weights.items() if kind != "Pod")  # RBAC first

    pod = rendered.one("Pod", "test")["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    parsed = parse_with_cli(container["args"])
    target = dry_run_namespace(rendered.values)
    assert parsed.namespace == target and target not in ("kube-system", NAMESPACE)  # one the webhook covers
    watched = rendered.values["operator"]["watchNamespaces"]
    assert not watched or target in watched
    lease = rendered.one("Lease", "operator")["metadata"]["name"] if electing else None
    assert parsed.lease == (f"{NAMESPACE}/{lease}" if electing else None)

    rules = rules_of(rendered, pod["serviceAccountName"])
    group, crd_group = "resource.dra-operator.io", "apiextensions.k8s.io"
    crds = sorted(o["metadata"]["name"] for o in rendered.of_kind("CustomResourceDefinition"))
    assert all(allowed(rules, crd_group, "customresourcedefinitions", "get", name=c) for c in crds)
    assert not allowed(rules, crd_group, "customresourcedefinitions", "get", name="other")
    assert allowed(rules, group, "resourceslices", "list")
    assert allowed(rules, "", "pods", "create", namespace=target)
    assert not allowed(rules, "", "pods", "create", namespace=NAMESPACE)
    if electing:
        assert allowed(rules, "coordination.k8s.io", "leases", "get", namespace=NAMESPACE, name=lease)
        assert not allowed(rules, "coordination.k8s.io", "leases", "list", namespace=NAMESPACE)
    else:
        assert allowed(rules, "coordination.k8s.io", "leases", "list")
    for verb in ("update", "patch", "delete"):
        assert not any(verb in rule["verbs"] for rule, _ in rules)
    assert not allowed(rules, "", "secrets", "get", namespace=NAMESPACE)


def dry_run_namespace(values: dict[str, Any]) -> str:
    """Where `helm test` creates its dry-run Pod: test.namespace, else the first watched one, else default."""
    return str(values["test"]["namespace"] or next(iter(values["operator"]["watchNamespaces"]), "default"))


def test_helm_test_can_be_turned_off(helm: Path) -> None:
    off = {"test": {"enabled": False}}
    objects = template(release=RELEASE, namespace=NAMESPACE, values=off, helm=helm)
    assert not hooks_of(Rendered(objects, coalesce_values(effective_values([]), off)), "test")


def test_admission_policies_name_the_releases_service_accounts(rendered: Rendered) -> None:
    """Each policy has its binding; the operator's and the agent's users are this release's ServiceAccounts;
    the device-env policy leaves the release's namespace out (the agent sets NVIDIA_VISIBLE_DEVICES)."""
    policies = {
        o["metadata"]["name"]: o for o in rendered.objects if o["kind"] == "ValidatingAdmissionPolicy"
    }
    bindings = [o for o in rendered.objects if o["kind"] == "ValidatingAdmissionPolicyBinding"]
    if not rendered.values.get("admissionPolicies", {}).get("enabled", True):
        assert not policies and not bindings
        return
    assert sorted(b["spec"]["policyName"] for b in bindings) == sorted(policies)
    assert all(b["spec"]["validationActions"] == ["Deny"] for b in bindings)
    accounts = {  # the ServiceAccounts the operator and agent Pods run as
        o["spec"]["template"]["spec"]["serviceAccountName"]
        for o in rendered.objects
        if o["kind"] in ("Deployment", "DaemonSet")
    }
    users = {
        c["expression"].split('"')[1]
        for p in policies.values()
        for c in p["spec"].get("matchConditions") or []
        if "username" in c["expression"]
    }
    assert users and all(u.startswith(f"system:serviceaccount:{NAMESPACE}:") for u in users)
    assert {u.rsplit(":", 1)[1] for u in users} <= accounts
    (env_policy,) = [p for name, p in policies.items() if name.endswith("-device-env")]
    selector = env_policy["spec"]["matchConstraints"]["namespaceSelector"]["matchExpressions"][0]
    assert selector["operator"] == "NotIn" and NAMESPACE in selector["values"]
