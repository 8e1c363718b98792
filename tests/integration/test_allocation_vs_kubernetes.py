"""The allocator against Kubernetes' own: the allocation cases run on the real control plane (kube-scheduler's
DRA plugin allocates resource.k8s.io/v1 claims), and for every Pod our allocator, given the same objects as
the apiserver stores them, must decide the same: the same devices (in order), nodeSelector and adminAccess on
the node the scheduler chose, or no allocation when the scheduler found none.

Node choice itself is not compared: kube-scheduler scores nodes (with random tie-breaks), we take the first by
name. Pods are created one at a time; a Pod the scheduler cannot place is deleted before the next, as simulate
does not retry it either.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dra_operator.allocation import Allocation, Node, PodRef, Snapshot, allocate
from dra_operator.api.resource import (
    API_VERSION,
    UPSTREAM_API_VERSION,
    DeviceClass,
    ResourceClaim,
    ResourceSlice,
    load_object,
)
from dra_operator.controlplane import ApiError, ControlPlane

CASES = Path(__file__).parents[1] / "fixtures" / "allocation"
# Cases made of plain Pods (workloads are expanded by simulate only).
CASE_FILES = sorted(
    p
    for p in CASES.glob("*.yaml")
    if p.name != "seed-slices.yaml"
    and "kind: Job" not in p.read_text()
    and "kind: DaemonSet" not in p.read_text()
)
RESOURCE = "/apis/resource.k8s.io/v1"
ADMIN_LABEL = "resource.kubernetes.io/admin-access"
CLAIM_CONTROLLER_TIMEOUT = 180.0
SCHEDULE_TIMEOUT = 60.0


GENERATED_CASES = 40
DRIVER = "gpu.example.com"
# Selectors the generator draws from: all valid in Kubernetes, some raising runtime errors on devices
# without the attribute (fatal, as in Kubernetes).
SELECTORS = [
    f'device.attributes["{DRIVER}"].model == "a"',
    f'device.attributes["{DRIVER}"].model == "b"',
    f'device.capacity["{DRIVER}"].memory.isGreaterThan(quantity("40Gi"))',
    f'device.capacity["{DRIVER}"].memory == quantity("32Gi")',
    f'"numa" in device.attributes["{DRIVER}"] && device.attributes["{DRIVER}"].numa == 1',
    f'device.attributes["{DRIVER}"].numa == 0',
]


def generate_case(rng: random.Random) -> list[dict[str, Any]]:
    """A small random cluster and Pods: several nodes and pools, attributes for selectors and constraints,
    taints; claims with counts, All, firstAvailable, constraints and adminAccess, shared and per Pod."""
    upstream = UPSTREAM_API_VERSION
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": upstream,
            "kind": "DeviceClass",
            "metadata": {"name": "gen-gpu"},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
        }
    ]

    def device(name: str) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        if rng.random() < 0.9:
            attributes["model"] = {"string": rng.choice("ab")}
        if rng.random() < 0.9:
            attributes["numa"] = {"int": rng.randint(0, 1)}
        made: dict[str, Any] = {
            "name": name,
            "attributes": attributes,
            "capacity": {"memory": {"value": rng.choice(["32Gi", "64Gi"])}},
        }
        if rng.random() < 0.1:
            effect = rng.choice(["NoSchedule", "NoExecute", "None"])
            made["taints"] = [{"key": "maintenance", "effect": effect}]
        if rng.random() < 0.15:
            # Shared by consumable capacity, in steps of 8Gi.
            made["allowMultipleAllocations"] = True
            policy = {"default": "8Gi", "validRange": {"min": "8Gi", "step": "8Gi"}}
            made["capacity"]["memory"]["requestPolicy"] = policy
        return made

    def add_slice(
        name: str, pool: str, scope: dict[str, Any], devices: list[dict[str, Any]], **extra: Any
    ) -> None:
        generation, count = extra.pop("generation", 0), extra.pop("count", 1)
        spec = {
            "driver": DRIVER,
            "pool": {"name": pool, "generation": generation, "resourceSliceCount": count},
            **scope,
            **extra,
        }
        if devices:
            spec["devices"] = devices
        docs.append(
            {"apiVersion": upstream, "kind": "ResourceSlice", "metadata": {"name": name}, "spec": spec}
        )

    nodes = [f"gen-node-{n}" for n in range(rng.randint(1, 3))]
    for n, node in enumerate(nodes):
        docs.append(
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": {"zone": "ab"[n % 2]}}}
        )
        for p in range(rng.randint(1, 2)):
            pool, devices = f"{node}-{p}", [device(f"dev-{p}-{d}") for d in range(rng.randint(2, 5))]
            shape = rng.random()
            if shape < 0.15:
                # Two slices of one pool; sometimes only one is published (incomplete: skipped, All fails).
                half = len(devices) // 2
                add_slice(f"{pool}-a", pool, {"nodeName": node}, devices[:half] or devices, count=2)
                if rng.random() < 0.7:
                    add_slice(
                        f"{pool}-b", pool, {"nodeName": node}, devices[half:] or [device("extra")], count=2
                    )
            elif shape < 0.25:
                # An outdated generation next to the current one.
                add_slice(f"{pool}-old", pool, {"nodeName": node}, [device("old-0")], generation=1)
                add_slice(f"{pool}-new", pool, {"nodeName": node}, devices, generation=2)
            elif shape < 0.35:
                # Partitionable: devices draw on a shared counter of the pool.
                counters = {"name": "mem", "counters": {"memory": {"value": "64Gi"}}}
                add_slice(
                    f"{pool}-counters", pool, {"nodeName": node}, [], count=2, sharedCounters=[counters]
                )
                for item in devices:
                    item["consumesCounters"] = [
                        {
                            "counterSet": "mem",
                            "counters": {"memory": {"value": rng.choice(["16Gi", "32Gi", "64Gi"])}},
                        }
                    ]
                add_slice(f"{pool}-devices", pool, {"nodeName": node}, devices, count=2)
            else:
                add_slice(f"{pool}-slice", pool, {"nodeName": node}, devices)
    if rng.random() < 0.3:
        add_slice(
            "gen-global", "global", {"allNodes": True}, [device(f"net-{d}") for d in range(rng.randint(1, 2))]
        )
    if rng.random() < 0.3:
        zone = {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]
        }
        add_slice("gen-zone-a", "zone-a", {"nodeSelector": zone}, [device(f"zone-{d}") for d in range(2)])
    if rng.random() < 0.3:
        per_device = []
        for d in range(rng.randint(1, 3)):
            item = device(f"port-{d}")
            if rng.random() < 0.5:
                item["nodeName"] = rng.choice(nodes)
            else:
                item["allNodes"] = True
            per_device.append(item)
        add_slice("gen-fabric", "fabric", {"perDeviceNodeSelection": True}, per_device)

    def request(name: str, allow_all: bool = True) -> dict[str, Any]:
        exactly: dict[str, Any] = {"deviceClassName": "gen-gpu"}
        if rng.random() < 0.5:
            exactly["selectors"] = [{"cel": {"expression": rng.choice(SELECTORS)}}]
        if allow_all and rng.random() < 0.1:
            exactly["allocationMode"] = "All"
        else:
            exactly["count"] = rng.choice([1, 1, 2, 3])
        if rng.random() < 0.1:
            exactly["tolerations"] = [{"key": "maintenance", "operator": "Exists"}]
        if rng.random() < 0.2:
            exactly["capacity"] = {"requests": {"memory": rng.choice(["8Gi", "12Gi", "20Gi", "48Gi"])}}
        if rng.random() < 0.3:
            subs = []
            for i in range(rng.randint(2, 3)):
                sub = {"name": f"alt-{i}", **{k: v for k, v in exactly.items() if k != "allocationMode"}}
                sub["count"] = rng.choice([1, 2, 3])
                if rng.random() < 0.5:
                    sub["selectors"] = [{"cel": {"expression": rng.choice(SELECTORS)}}]
                subs.append(sub)
            return {"name": name, "firstAvailable": subs}
        if rng.random() < 0.08:
            exactly["adminAccess"] = True
        return {"name": name, "exactly": exactly}

    def claim_spec() -> dict[str, Any]:
        requests = [request(f"r{i}") for i in range(rng.randint(1, 2))]
        devices: dict[str, Any] = {"requests": requests}
        if len(requests) > 1 and rng.random() < 0.4:
            kind = rng.choice(["matchAttribute", "distinctAttribute"])
            attribute = rng.choice(["numa", "model"])
            devices["constraints"] = [{kind: f"{DRIVER}/{attribute}"}]
        return {"devices": devices}

    docs.append(
        {
            "apiVersion": upstream,
            "kind": "ResourceClaim",
            "metadata": {"name": "gen-shared"},
            "spec": claim_spec(),
        }
    )
    for t in range(2):
        docs.append(
            {
                "apiVersion": upstream,
                "kind": "ResourceClaimTemplate",
                "metadata": {"name": f"gen-template-{t}"},
                "spec": {"spec": claim_spec()},
            }
        )
    for i in range(rng.randint(2, 4)):
        refs: list[dict[str, str]] = []
        for j in range(rng.randint(1, 2)):
            if rng.random() < 0.25 and not any(r.get("resourceClaimName") for r in refs):
                refs.append({"name": f"c{j}", "resourceClaimName": "gen-shared"})
            else:
                refs.append(
                    {"name": f"c{j}", "resourceClaimTemplateName": f"gen-template-{rng.randint(0, 1)}"}
                )
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"gen-pod-{i}"},
                "spec": {"containers": [{"name": "c", "image": "x"}], "resourceClaims": refs},
            }
        )
    return docs


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") != "Expect"]


def _upstream(obj: dict[str, Any], namespace: str | None) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    if obj.get("apiVersion") == API_VERSION:
        obj["apiVersion"] = UPSTREAM_API_VERSION
    obj.pop("status", None)
    meta = obj.setdefault("metadata", {})
    if namespace is not None:
        meta["namespace"] = namespace
    return obj


class Cluster:
    """The case's objects on the control plane, removed again afterwards."""

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        self.plane = plane
        self.namespace = namespace
        self.cluster_scoped: list[str] = []
        self.pods: list[str] = []

    def create(self, obj: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
        kind = obj["kind"]
        plural = {"DeviceClass": "deviceclasses", "ResourceSlice": "resourceslices"}.get(kind)
        if plural is not None:
            path = f"{RESOURCE}/{plural}"
            created: dict[str, Any] = self.plane.request("POST", path, obj)
            self.cluster_scoped.append(f"{path}/{obj['metadata']['name']}")
            return created
        ns = self.namespace
        plural = {"ResourceClaim": "resourceclaims", "ResourceClaimTemplate": "resourceclaimtemplates"}[kind]
        path = f"{RESOURCE}/namespaces/{ns}/{plural}"
        created = self.plane.request("POST", path, obj)
        if status is not None:
            created["status"] = status
            created = self.plane.request("PUT", f"{path}/{obj['metadata']['name']}/status", created)
        return created

    def claims(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.plane.request("GET", f"{RESOURCE}/resourceclaims")["items"]
        return items

    def pod(self, name: str) -> dict[str, Any]:
        pod: dict[str, Any] = self.plane.request("GET", f"/api/v1/namespaces/{self.namespace}/pods/{name}")
        return pod

    def delete_pod(self, name: str) -> None:
        try:
            self.plane.request(
                "DELETE", f"/api/v1/namespaces/{self.namespace}/pods/{name}", {"gracePeriodSeconds": 0}
            )
        except ApiError as error:
            if error.status != 404:
                raise

    def cleanup(self) -> None:
        for name in self.pods:
            self.delete_pod(name)
        for path in reversed(self.cluster_scoped):
            try:
                self.plane.request("DELETE", path)
            except ApiError as error:
                if error.status != 404:
                    raise


@pytest.fixture
def cluster(control_plane: ControlPlane, namespace: str) -> Iterator[Cluster]:
    control_plane.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}",
        {"metadata": {"labels": {ADMIN_LABEL: "true"}}},
        content_type="application/merge-patch+json",
    )
    made = Cluster(control_plane, namespace)
    try:
        yield made
    finally:
        made.cleanup()


def _decided(cluster: Cluster, name: str) -> dict[str, Any] | None:
    """The Pod once the scheduler has bound it or given up on it (at least once), else None."""
    pod = cluster.pod(name)
    if pod["spec"].get("nodeName"):
        return pod
    for condition in pod.get("status", {}).get("conditions", []):
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return pod
    return None


def _claims_named(pod: dict[str, Any]) -> bool:
    """Whether every template claim of the Pod has its generated claim recorded in the Pod's status."""
    statuses = {
        s["name"]: s.get("resourceClaimName") for s in pod.get("status", {}).get("resourceClaimStatuses", [])
    }
    return all(
        ref.get("resourceClaimName") or statuses.get(ref["name"])
        for ref in pod["spec"].get("resourceClaims", [])
    )


def _pod_claim_names(pod: dict[str, Any]) -> list[str]:
    statuses = {
        s["name"]: s.get("resourceClaimName") for s in pod.get("status", {}).get("resourceClaimStatuses", [])
    }
    names = []
    for ref in pod["spec"].get("resourceClaims", []):
        name = ref.get("resourceClaimName") or statuses.get(ref["name"])
        assert name, f"claim {ref['name']} of Pod {pod['metadata']['name']} was not generated"
        names.append(name)
    return names


def _essentials(result: Any) -> dict[str, Any]:
    devices = [
        (
            r.request,
            r.driver,
            r.pool,
            r.device,
            bool(r.admin_access),
            r.share_id is not None,  # Kubernetes draws share IDs at random: compare presence only
            {k: v.value for k, v in (r.consumed_capacity or {}).items()},
        )
        for r in result.devices.results or []
    ]
    selector = result.node_selector.to_dict() if result.node_selector is not None else None
    return {"devices": devices, "nodeSelector": selector}


def _items(plane: ControlPlane, plural: str, kind: str) -> list[dict[str, Any]]:
    """A list's items with the kind and apiVersion that list responses leave out."""
    items: list[dict[str, Any]] = plane.request("GET", f"{RESOURCE}/{plural}")["items"]
    return [{**item, "kind": kind, "apiVersion": UPSTREAM_API_VERSION} for item in items]


def _ours(
    plane: ControlPlane, pod: dict[str, Any], claim_names: list[str], before: dict[tuple[str, str], Any]
) -> tuple[Any, dict[tuple[str, str], ResourceClaim]]:
    """Our decision from the objects as the apiserver stores them, with this Pod's new allocations removed."""
    classes = [load_object(o) for o in _items(plane, "deviceclasses", "DeviceClass")]
    slices = [load_object(o) for o in _items(plane, "resourceslices", "ResourceSlice")]
    nodes = [Node.from_object(n) for n in plane.request("GET", "/api/v1/nodes")["items"]]
    claims: dict[tuple[str, str], ResourceClaim] = {}
    for raw in _items(plane, "resourceclaims", "ResourceClaim"):
        key = (raw["metadata"]["namespace"], raw["metadata"]["name"])
        status = raw.get("status") or {}
        if key in before:
            raw["status"] = {"allocation": before[key]} if before[key] else {}
        elif status.get("allocation"):
            raw["status"] = {}
        claim = load_object(raw)
        assert isinstance(claim, ResourceClaim)
        claims[key] = claim
    snapshot = Snapshot.build(
        [c for c in classes if isinstance(c, DeviceClass)],
        [s for s in slices if isinstance(s, ResourceSlice)],
        nodes,
        list(claims.values()),
    )
    namespace = pod["metadata"]["namespace"]
    mine = [claims[(namespace, name)] for name in claim_names]
    node = pod["spec"].get("nodeName")
    ref = PodRef(namespace, pod["metadata"]["name"], pod["metadata"]["uid"])
    return allocate(snapshot, ref, mine, [node] if node else None), claims


@pytest.mark.parametrize("case", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_allocation_matches_kubernetes(
    case: Path,
    cluster: Cluster,
    make_node: Callable[..., dict[str, Any]],
    wait_for: Callable[..., Any],
) -> None:
    assert _compare(case.name, _documents(case), cluster, make_node, wait_for) > 0


@pytest.mark.parametrize("seed", range(GENERATED_CASES))
def test_generated_cases_match_kubernetes(
    seed: int,
    cluster: Cluster,
    make_node: Callable[..., dict[str, Any]],
    wait_for: Callable[..., Any],
) -> None:
    documents = generate_case(random.Random(seed))
    assert _compare(f"seed {seed}", documents, cluster, make_node, wait_for) > 0


def _compare(
    case: str,
    documents: list[dict[str, Any]],
    cluster: Cluster,
    make_node: Callable[..., dict[str, Any]],
    wait_for: Callable[..., Any],
) -> int:
    """Run the Pods of a case on Kubernetes and compare each decision with ours; returns the Pods compared."""
    nodes = [d for d in documents if d["kind"] == "Node"]
    if nodes:
        for node in nodes:
            make_node(node["metadata"]["name"], node["metadata"].get("labels"))
    else:
        names = {d["spec"].get("nodeName") for d in documents if d["kind"] == "ResourceSlice"}
        for name in sorted(n for n in names if n):
            make_node(name)
    for doc in documents:
        if doc["kind"] in ("DeviceClass", "ResourceSlice"):
            cluster.create(_upstream(doc, None))
    for doc in documents:
        if doc["kind"] in ("ResourceClaim", "ResourceClaimTemplate"):
            cluster.create(_upstream(doc, cluster.namespace), doc.get("status"))

    compared = 0
    for doc in documents:
        if doc["kind"] != "Pod":
            continue
        before = {
            (c["metadata"]["namespace"], c["metadata"]["name"]): (c.get("status") or {}).get("allocation")
            for c in cluster.claims()
        }
        pod = copy.deepcopy(doc)
        pod["metadata"]["namespace"] = cluster.namespace
        for container in pod["spec"]["containers"]:
            container["image"] = "registry.invalid/noop:1"  # never pulled: there is no kubelet
        name = pod["metadata"]["name"]
        cluster.plane.request("POST", f"/api/v1/namespaces/{cluster.namespace}/pods", pod)
        cluster.pods.append(name)
        decided = wait_for(
            lambda n=name: _decided(cluster, n), SCHEDULE_TIMEOUT, f"scheduler decision for {name}"
        )
        if not decided["spec"].get("nodeName"):
            # Give the claim controller a moment to record generated claims before reading the Pod's status.
            # Its work queue is shared with the namespace clean-up of every earlier module, and CI saw it take
            # over 60 s twice on a loaded machine: wait longer for it than for the scheduler.
            wait_for(
                lambda n=name: _claims_named(cluster.pod(n)),
                CLAIM_CONTROLLER_TIMEOUT,
                f"generated claims of {name} (the built-in resourceclaim controller)",
            )
            decided = cluster.pod(name)
        claim_names = _pod_claim_names(decided)
        outcome, claims = _ours(cluster.plane, decided, claim_names, before)
        k8s_claims = {(c["metadata"]["namespace"], c["metadata"]["name"]): c for c in cluster.claims()}
        if decided["spec"].get("nodeName"):
            if not isinstance(outcome, Allocation):
                theirs = {
                    n: (k8s_claims[(cluster.namespace, n)].get("status") or {}).get("allocation")
                    for n in claim_names
                }
                pytest.fail(
                    f"{case} {name}: Kubernetes allocated on {decided['spec']['nodeName']}, not we:\n"
                    f"{outcome.explanation.render()}\n kube: {json.dumps(theirs)}",
                    pytrace=False,
                )
            for claim_name in claim_names:
                key = (cluster.namespace, claim_name)
                theirs = k8s_claims[key]["status"]["allocation"]
                if before.get(key):
                    continue  # allocated earlier (shared): not decided now
                stored = load_object({**claims[key].to_dict(), "status": {"allocation": theirs}})
                assert isinstance(stored, ResourceClaim) and stored.status is not None
                want = _essentials(stored.status.allocation)
                got = _essentials(outcome.results[key])
                assert got == want, (
                    f"{case} {name} {claim_name} on {decided['spec']['nodeName']}:\n"
                    f" ours {got}\n kube {want}\n"
                    f" in use before: {json.dumps({'/'.join(k): v for k, v in before.items() if v})}"
                )
        else:
            conditions = json.dumps(decided["status"].get("conditions"))
            assert not isinstance(outcome, Allocation), (
                f"{case} {name}: Kubernetes did not allocate ({conditions}), we on {outcome.node_name}"
            )
            cluster.delete_pod(name)
            wait_for(lambda n=name: _gone(cluster, n), SCHEDULE_TIMEOUT, f"{name} deleted")
        compared += 1
    return compared


def _gone(cluster: Cluster, name: str) -> bool:
    try:
        cluster.pod(name)
    except ApiError as error:
        return error.status == 404
    return False
