"""Faults the operator must ride through (issue 10): writes refused for good, API server and etcd restarts,
a replica started while the API server is down, and a leader paused past its Lease.

This module runs its own ControlPlane: it restarts kube-apiserver and etcd, which the session's shared one
must never see.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import install_crds, seed
from test_operator_e2e import Cluster, assert_no_double_allocation, pod, ungated

from dra_operator.controlplane import ControlPlane, gpu_slice_manifest, node_manifest
from dra_operator.operator.local import LocalOperator, LocalProcess

GROUP_PATH = "/apis/resource.dra-operator.io/v1"
LEASE = "dra-operator-faults"
Json = dict[str, Any]
WaitFor = Callable[..., Any]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = ControlPlane()
    cp.start()
    try:
        install_crds(cp.kubectl)
        cp.request("POST", f"{GROUP_PATH}/deviceclasses", seed("deviceclass.yaml"))
        yield cp
    finally:
        cp.stop()


def start_operator(cp: ControlPlane, log_dir: Path, name: str = "operator") -> LocalOperator:
    log_dir.mkdir(parents=True, exist_ok=True)
    return LocalOperator(
        cp.kubeconfig,
        extra_args=("--lease-namespace=default", f"--lease-name={LEASE}", "--lease-seconds=5"),
        log_file=log_dir / f"{name}.log",
        name=name,
    ).start()


def start_agent(cp: ControlPlane, inventory: Path, node: str, log_dir: Path, interval: float) -> LocalProcess:
    """`dra-operator agent --backend simulated` for `node`, publishing `inventory`."""
    args = ["agent", "--backend=simulated", f"--inventory={inventory}", f"--node={node}"]
    args += [f"--kubeconfig={cp.kubeconfig}", f"--interval={interval}"]
    return LocalProcess(args, log_file=log_dir / "agent.log").start()


def readyz(op: LocalOperator) -> int:
    """The HTTP status of the replica's /readyz (the chart's readiness probe)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/readyz", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def error_tracebacks(log_file: Path) -> list[str]:
    """JSON log lines at error level or above that carry a traceback."""
    found = []
    for line in log_file.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("level") in ("error", "critical") and (
                record.get("exception") or "Traceback" in line
            ):
                found.append(line)
    return found


@pytest.fixture
def cluster(plane: ControlPlane) -> Iterator[Cluster]:
    name = f"faults-{uuid.uuid4().hex[:6]}"
    plane.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    yield Cluster(plane, name)
    with contextlib.suppress(Exception):
        plane.request("DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture
def operator(plane: ControlPlane, tmp_path: Path, wait_for: WaitFor) -> Iterator[LocalOperator]:
    op = start_operator(plane, tmp_path)
    wait_for(op.ready, timeout=90, message="the operator to be ready and leading")
    yield op
    print(f"--- operator log ({op.log_file}) ---\n{op.log(80)}")
    op.stop()


def template_ref(name: str) -> list[Json]:
    return [{"name": "gpu", "resourceClaimTemplateName": name}]


def any_gpu_template(name: str, labels: dict[str, str] | None = None) -> Json:
    template = seed("resourceclaimtemplate.yaml")
    template["metadata"]["name"] = name
    template["spec"]["spec"]["devices"]["requests"][0]["exactly"].pop("selectors")
    if labels is not None:
        template["spec"]["metadata"] = {"labels": labels}
    return template


def test_refused_claim_is_not_retried_hot_and_the_pod_says_why(
    operator: LocalOperator, cluster: Cluster, wait_for: WaitFor
) -> None:
    """Item 2: a template whose claim metadata the API server refuses (422 Invalid) gives a Warning event on
    the Pod and backoff (1, 2, 4, 8 s …), not a hot loop; fixing the template retries at once. (The
    validating webhook now refuses such a template up front; one made before it was installed remains.)"""
    node = f"n-{uuid.uuid4().hex[:6]}"
    cluster.cp.request("POST", "/api/v1/nodes", node_manifest(node))
    cluster.cp.request(
        "POST",
        f"{GROUP_PATH}/resourceslices",
        {
            "apiVersion": "resource.dra-operator.io/v1",
            "kind": "ResourceSlice",
            "metadata": {"name": f"{node}-slice"},
            "spec": {
                "driver": "driver.example.com",
                "nodeName": node,
                "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                "devices": [{"name": "gpu-0", "attributes": {"type": {"string": "gpu"}}}],
            },
        },
    )
    # The validating webhook refuses such a template now; one created before it was installed still exists.
    cluster.cp.request(
        "DELETE", "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/dra-operator"
    )
    cluster.create(cluster.ours("resourceclaimtemplates"), any_gpu_template("bad", {"not a valid key!": "x"}))
    cluster.create(cluster.pods_path(), pod("refused", template_ref("bad")))
    events = wait_for(
        lambda: cluster.events("refused", "WriteRejected"), timeout=60, message="a WriteRejected event"
    )
    assert events[0]["type"] == "Warning"
    assert "refused to create a ResourceClaim (422 Invalid)" in events[0]["message"], events[0]
    assert "not a valid key!" in events[0]["message"]

    window = 15.0
    before = len(operator.log_file.read_text().splitlines())
    time.sleep(window)  # a measurement window, not synchronisation: how much is logged meanwhile
    lines = operator.log_file.read_text().splitlines()[before:]
    print(f"{len(lines)} log lines in {window:.0f}s under a refused write")
    assert len(lines) <= 10, "\n".join(lines)
    assert len(cluster.events("refused", "WriteRejected")) == 1, "one event, not one per retry"
    assert not ungated(cluster.get(cluster.pods_path("refused")))

    # The fix (a template without the bad label) is acted on at once, not at the next backoff (16 s by now).
    cluster.delete(cluster.ours("resourceclaimtemplates", "bad"))
    fixed = time.monotonic()
    cluster.create(cluster.ours("resourceclaimtemplates"), any_gpu_template("bad"))
    wait_for(lambda: ungated(cluster.get(cluster.pods_path("refused"))), timeout=30, message="the fixed Pod")
    assert time.monotonic() - fixed < 8
    assert error_tracebacks(operator.log_file) == []
    cluster.delete(cluster.pods_path("refused"))
    cluster.cp.request("DELETE", f"{GROUP_PATH}/resourceslices/{node}-slice")
    cluster.cp.request("DELETE", f"/api/v1/nodes/{node}")


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_operator_webhook_and_agent_ride_through_a_restart(
    plane: ControlPlane,
    operator: LocalOperator,
    cluster: Cluster,
    tmp_path: Path,
    wait_for: WaitFor,
    component: str,
) -> None:
    """Item 4: nothing exits or logs a traceback at error level; readiness drops and comes back; watches
    resume (a Pod created afterwards is allocated, a slice change is seen); nothing is lost or doubled."""
    node = f"n-{uuid.uuid4().hex[:6]}"
    plane.request("POST", "/api/v1/nodes", node_manifest(node))
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(f"driver: driver.example.com\nnodes: [{node}]\ngpus: {{count: 2, memory: 64Gi}}\n")
    agent = start_agent(plane, inventory, node, tmp_path, interval=1)
    try:
        cluster.create(cluster.ours("resourceclaimtemplates"), any_gpu_template("any"))
        cluster.create(cluster.pods_path(), pod("before", template_ref("any")))
        wait_for(lambda: ungated(cluster.get(cluster.pods_path("before"))), timeout=60, message="Pod before")

        plane.stop_component(component)
        down = time.monotonic()
        wait_for(
            lambda: operator.metrics().get("dra_operator_ready") == 0.0,
            timeout=30,
            message="readiness to drop while the API server cannot answer",
        )
        dropped = time.monotonic() - down
        assert readyz(operator) == 503, "the readiness probe's endpoint must fail while the server is away"
        operator.check()  # and liveness holds: the process waits, it does not exit
        late = None
        if component == "kube-apiserver":
            # A replica started now waits for the API server instead of exiting.
            late = start_operator(plane, tmp_path / "late", "late")
            wait_for(
                lambda: "waiting for the API server" in late.log_file.read_text(),
                timeout=30,
                message="the late replica to wait",
            )
            late.check()
        plane.start_component(component)
        up = time.monotonic()
        wait_for(operator.ready, timeout=60, message="the operator to be ready again")
        recovered = time.monotonic() - up
        assert readyz(operator) == 200
        print(f"{component}: readiness dropped after {dropped:.1f}s, back {recovered:.1f}s after restart")
        if late is not None:
            wait_for(
                lambda: late.metrics().get("dra_operator_ready") == 1.0,
                timeout=90,
                message="the late replica to fill its caches once the API server is back",
            )
            late.stop()
            assert error_tracebacks(late.log_file) == []

        cluster.create(cluster.pods_path(), pod("after", template_ref("any")))
        wait_for(lambda: ungated(cluster.get(cluster.pods_path("after"))), timeout=60, message="Pod after")
        # A slice change after the restart: a third GPU appears, and a third Pod gets it.
        inventory.write_text(inventory.read_text().replace("count: 2", "count: 3"))
        cluster.create(cluster.pods_path(), pod("third", template_ref("any")))
        wait_for(lambda: ungated(cluster.get(cluster.pods_path("third"))), timeout=60, message="Pod third")
        assert_no_double_allocation(cluster.claims())
        assert len([c for c in cluster.claims() if c["status"].get("allocation")]) == 3
        operator.check()
        agent.check()
        for log_file in (operator.log_file, agent.log_file):
            assert error_tracebacks(log_file) == [], log_file
    finally:
        print(f"--- agent log ---\n{agent.log(30)}")
        agent.stop()
        for p in cluster.items(cluster.pods_path()):
            cluster.delete(cluster.pods_path(p["metadata"]["name"]))
        with contextlib.suppress(Exception):
            plane.request("DELETE", f"/api/v1/nodes/{node}")


def test_a_paused_leader_never_acts_after_its_successor(
    plane: ControlPlane, operator: LocalOperator, cluster: Cluster, tmp_path: Path, wait_for: WaitFor
) -> None:
    """Item 6: SIGSTOP the leader past its 5 s Lease; the standby takes over and allocates; on SIGCONT the old
    leader writes nothing (its own write counters) and stands down (leader metric 0), without exiting."""
    node = f"n-{uuid.uuid4().hex[:6]}"
    plane.request("POST", "/api/v1/nodes", node_manifest(node))
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(f"driver: driver.example.com\nnodes: [{node}]\ngpus: {{count: 4, memory: 64Gi}}\n")
    agent = start_agent(plane, inventory, node, tmp_path, interval=5)
    standby = start_operator(plane, tmp_path / "standby", "standby")
    try:
        cluster.create(cluster.ours("resourceclaimtemplates"), any_gpu_template("any"))
        wait_for(lambda: standby.metrics().get("dra_operator_ready") == 1.0, timeout=90, message="standby")
        cluster.create(cluster.pods_path(), pod("first", template_ref("any")))
        wait_for(lambda: ungated(cluster.get(cluster.pods_path("first"))), timeout=60, message="Pod first")

        def writes(op: LocalOperator) -> dict[str, float]:
            return {
                k: v
                for k, v in op.metrics().items()
                if k.startswith("dra_operator_api_writes_total") and "leases" not in k
            }

        old = writes(operator)
        os.kill(operator.pid, signal.SIGSTOP)
        try:
            wait_for(standby.ready, timeout=60, message="the standby to take over")
            lease = plane.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/default/leases/{LEASE}")
            successor = lease["spec"]["holderIdentity"]
            cluster.create(cluster.pods_path(), pod("second", template_ref("any")))
            wait_for(lambda: ungated(cluster.get(cluster.pods_path("second"))), timeout=60, message="second")
        finally:
            os.kill(operator.pid, signal.SIGCONT)
        wait_for(
            lambda: operator.metrics().get("dra_operator_leader") == 0.0,
            timeout=30,
            message="the old leader to stand down",
        )
        cluster.create(cluster.pods_path(), pod("third", template_ref("any")))
        wait_for(lambda: ungated(cluster.get(cluster.pods_path("third"))), timeout=60, message="third")
        assert writes(operator) == old, "the paused leader wrote after waking"
        operator.check()
        lease = plane.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/default/leases/{LEASE}")
        assert lease["spec"]["holderIdentity"] == successor
        assert_no_double_allocation(cluster.claims())
    finally:
        agent.stop()
        for p in cluster.items(cluster.pods_path()):
            cluster.delete(cluster.pods_path(p["metadata"]["name"]))
        # the fixture's teardown stops `operator`: the standby goes here
        standby.stop()
        with contextlib.suppress(Exception):
            plane.request("DELETE", f"/api/v1/nodes/{node}")


def etcd_delete(plane: ControlPlane, key: str) -> int:
    """Delete `key` straight from etcd (its JSON gateway): how many keys went."""
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{plane.ports['etcd-client']}/v3/kv/deleterange", body)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return int(json.loads(answer.read()).get("deleted") or 0)


def test_what_the_watches_missed_is_found_by_listing_again_after_a_real_410(
    plane: ControlPlane, operator: LocalOperator, cluster: Cluster, wait_for: WaitFor
) -> None:
    """A Pod and its claim vanish while the operator's watches are away: removed from etcd while
    kube-apiserver is down, as another API server of an HA control plane could have done, so no watch
    event of ours ever says so. The restarted API server's watch caches start after the deletions, so every
    watch resumed from before them gets a real 410 Gone; the relist finds both gone, the device they held
    is free, and the Pod that waited for it is placed."""
    node = f"n-{uuid.uuid4().hex[:6]}"
    plane.request("POST", "/api/v1/nodes", node_manifest(node))
    slice_path = f"{GROUP_PATH}/resourceslices/{node}-gpus"
    one_gpu = gpu_slice_manifest(node, {"gpu-0": "64Gi"}, name=f"{node}-gpus")
    plane.request("POST", f"{GROUP_PATH}/resourceslices", one_gpu)

    def pinned(name: str) -> Json:
        manifest = pod(name, template_ref("any"))
        manifest["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
        return manifest

    try:
        cluster.create(cluster.ours("resourceclaimtemplates"), any_gpu_template("any"))
        cluster.create(cluster.pods_path(), pinned("holder"))
        wait_for(
            lambda: ungated(cluster.get(cluster.pods_path("holder"))), timeout=60, message="holder placed"
        )
        (claim,) = cluster.claims()
        cluster.create(cluster.pods_path(), pinned("waiter"))
        wait_for(
            lambda: (
                "AllocationFailed" in json.dumps(cluster.items(f"/api/v1/namespaces/{cluster.ns}/events"))
            ),
            timeout=60,
            message="the waiter to wait for the device",
        )
        expired_before = operator.log_file.read_text().count("watch expired: listing again")

        plane.stop_component("kube-apiserver")
        try:
            assert etcd_delete(plane, f"/registry/pods/{cluster.ns}/holder") == 1
            claims = f"/registry/resource.dra-operator.io/resourceclaims/{cluster.ns}"
            assert etcd_delete(plane, f"{claims}/{claim['metadata']['name']}") == 1
        finally:
            plane.start_component("kube-apiserver")

        wait_for(
            lambda: ungated(cluster.get(cluster.pods_path("waiter"))), timeout=90, message="waiter placed"
        )
        assert cluster.get(cluster.pods_path("holder")) is None
        (placed,) = cluster.claims()
        assert placed["status"]["reservedFor"][0]["name"] == "waiter"
        assert operator.log_file.read_text().count("watch expired: listing again") > expired_before
        assert error_tracebacks(operator.log_file) == []
        operator.check()
    finally:
        for p in cluster.items(cluster.pods_path()):
            cluster.delete(cluster.pods_path(p["metadata"]["name"]))
        with contextlib.suppress(Exception):
            plane.request("DELETE", slice_path)
        with contextlib.suppress(Exception):
            plane.request("DELETE", f"/api/v1/nodes/{node}")
