"""What one Pod create costs kube-apiserver with each way of admitting it (a benchmark, not a test).

One embedded control plane (Kubernetes 1.36, no operator, no kubelet); C concurrent clients create P Pods
without claims, row after row, each row in a namespace of its own:

- `none`: nothing but the built-in admission plugins;
- `no-op webhook`: bench/noop_webhook.py, which answers `allowed` at once with no patch;
- `policy`: a MutatingAdmissionPolicy (admissionregistration.k8s.io/v1, GA since 1.36) that does in the
  apiserver the cheapest part of what our webhook does to a Pod: add the scheduling gate and the label
  (JSONPatch), without the claims manifest or the env vars;
- `none, again`: as the first row, a check on the machine's drift.

Per row: the creates' wall time, the mean latency of one create (clients x wall / P) and kube-apiserver's CPU
per create (/proc schedstat). It answers whether admitting Pods without a webhook call, in the apiserver
itself, would be cheaper (issue 14's admission latency is read from the apiserver while it is saturated).

    .venv/bin/python bench/admission_cost.py [--pods 1500] [--clients 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dra_operator.controlplane import ControlPlane, wait_until
from operator_vs_builtin import NOOP_WEBHOOK, Client, Json, noop_webhook, scheduling, wait_for_webhook

POLICIES = "/apis/admissionregistration.k8s.io/v1"
GATE_AND_LABEL = (
    "[JSONPatch{op: 'add', path: '/metadata/labels', value: {'resource.dra-operator.io/managed': 'true'}},"
    " JSONPatch{op: 'add', path: '/spec/schedulingGates',"
    " value: [{'name': 'resource.dra-operator.io/allocation'}]}]"
)


def plain_pod(name: str) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "registry.invalid/noop:1"}]},
    }


def gate_policy(namespace: str) -> tuple[Json, Json]:
    """The policy and its binding to `namespace`."""
    policy = {
        "metadata": {"name": "bench-gate"},
        "spec": {
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ]
            },
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression": GATE_AND_LABEL}}],
        },
    }
    binding = {
        "metadata": {"name": "bench-gate"},
        "spec": {
            "policyName": "bench-gate",
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    return policy, binding


def namespace(cp: ControlPlane, name: str) -> str:
    """A new namespace, once Pods may be created in it (its default ServiceAccount exists)."""
    cp.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    wait_until(
        lambda: cp.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        timeout=60,
        message=f"the default ServiceAccount of {name}",
    )
    return name


def burst(cp: ControlPlane, client: Client, ns: str, pods: int, clients: int) -> tuple[float, float]:
    """Create `pods` Pods in `ns` from `clients` clients: (wall seconds, kube-apiserver's CPU seconds)."""
    path = f"/api/v1/namespaces/{ns}/pods"
    apiserver = [cp.pids["kube-apiserver"]]
    before = scheduling(apiserver)
    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda index: client.create(path, plain_pod(f"p{index:04}")), range(pods)))
    wall = time.monotonic() - started
    client.close()
    return wall, (scheduling(apiserver) - before).on_cpu


def gated(cp: ControlPlane, ns: str) -> bool:
    """Whether a dry-run Pod create in `ns` comes back gated (the policy takes effect asynchronously)."""
    probe = cp.request("POST", f"/api/v1/namespaces/{ns}/pods?dryRun=All", plain_pod("probe"))
    return bool(probe["spec"].get("schedulingGates"))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=1500, help="Pods per row (default 1500)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent creating clients (default 8)")
    args = parser.parse_args()
    rows: list[tuple[str, float, float]] = []
    with ControlPlane() as cp, tempfile.TemporaryDirectory(prefix="bench-admission-") as tmp:
        client = Client(cp)
        rows.append(("none", *burst(cp, client, namespace(cp, "none"), args.pods, args.clients)))
        with noop_webhook(cp, Path(tmp), "webhook"):
            wait_for_webhook(cp, client, namespace(cp, "webhook"), NOOP_WEBHOOK)
            rows.append(("no-op webhook", *burst(cp, client, "webhook", args.pods, args.clients)))
        policy, binding = gate_policy("policy")
        cp.request("POST", f"{POLICIES}/mutatingadmissionpolicies", policy)
        cp.request("POST", f"{POLICIES}/mutatingadmissionpolicybindings", binding)
        policed = namespace(cp, "policy")
        wait_until(lambda: gated(cp, policed), timeout=60, message="the policy to gate a Pod")
        rows.append(("policy", *burst(cp, client, policed, args.pods, args.clients)))
        rows.append(("none, again", *burst(cp, client, namespace(cp, "none-again"), args.pods, args.clients)))
    print(f"{args.pods} Pods per row, {args.clients} concurrent clients, no operator, Kubernetes 1.36")
    print(f"{'admission':<14} | wall s | ms per create | apiserver CPU ms per create")
    for name, wall, cpu in rows:
        latency, cost = 1000 * wall * args.clients / args.pods, 1000 * cpu / args.pods
        print(f"{name:<14} | {wall:6.2f} | {latency:13.1f} | {cost:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
