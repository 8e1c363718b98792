"""Proves the embedded control plane is real: Job controller, scheduler, garbage collector, CRD schemas."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from dra_operator.controlplane import K8S_VERSION, ApiError, ControlPlane, pod_succeeded_status

MERGE_PATCH = "application/merge-patch+json"


def _job(name: str, completions: int) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completions": completions,
            "parallelism": completions,
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    # Never pulled: there is no kubelet. The test plays the kubelet's part for pod status.
                    "containers": [{"name": "work", "image": "registry.invalid/noop:1"}],
                }
            },
        },
    }


def _pods(cp: ControlPlane, namespace: str, job: str) -> list[dict[str, Any]]:
    selector = f"batch.kubernetes.io/job-name={job}"
    items: list[dict[str, Any]] = cp.request(
        "GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}"
    )["items"]
    return items


def test_server_is_the_pinned_release_and_serves_dra(kubectl: Callable[..., CompletedProcess[str]]) -> None:
    version = json.loads(kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == K8S_VERSION
    assert version["clientVersion"]["gitVersion"] == K8S_VERSION
    assert "resource.k8s.io/v1" in kubectl("api-versions").stdout.split()


def test_job_pods_are_scheduled_completed_and_garbage_collected(
    control_plane: ControlPlane,
    make_node: Callable[..., dict[str, Any]],
    namespace: str,
    wait_for: Callable[..., Any],
) -> None:
    nodes = {make_node("smoke-node-a")["metadata"]["name"], make_node("smoke-node-b")["metadata"]["name"]}
    jobs = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    control_plane.request("POST", jobs, _job("smoke", completions=3))

    finished: set[str] = set()

    def finish_bound_pods() -> bool:
        # The Job controller creates the Pods and the scheduler binds them; we finish each bound one as a
        # kubelet would, until the Job has counted all three completions.
        for pod in _pods(control_plane, namespace, "smoke"):
            name = pod["metadata"]["name"]
            if pod["spec"].get("nodeName") and name not in finished:
                assert pod["spec"]["nodeName"] in nodes
                control_plane.request(
                    "PATCH",
                    f"/api/v1/namespaces/{namespace}/pods/{name}/status",
                    pod_succeeded_status(pod),
                    content_type=MERGE_PATCH,
                )
                finished.add(name)
        job = control_plane.request("GET", f"{jobs}/smoke")
        return bool(job.get("status", {}).get("succeeded", 0) == 3)

    wait_for(finish_bound_pods, timeout=60, message="Job smoke to count 3 succeeded Pods")
    pods = _pods(control_plane, namespace, "smoke")
    assert len(pods) == 3
    assert {pod["spec"]["nodeName"] for pod in pods} <= nodes
    wait_for(
        lambda: any(
            c["type"] == "Complete" and c["status"] == "True"
            for c in control_plane.request("GET", f"{jobs}/smoke").get("status", {}).get("conditions", [])
        ),
        timeout=30,
        message="Job smoke to be Complete",
    )

    control_plane.request(
        "DELETE",
        f"{jobs}/smoke",
        {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"},
    )
    wait_for(
        lambda: not _pods(control_plane, namespace, "smoke"),
        timeout=60,
        message="the garbage collector to delete the Job's Pods",
    )


def _crd(group: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


@pytest.mark.parametrize(
    ("spec", "field"),
    [({"size": 0}, "spec.size"), ({"size": "big"}, "spec.size"), ({}, "spec.size")],
    ids=["below-minimum", "wrong-type", "missing-required"],
)
def test_crd_schema_is_enforced_by_the_apiserver(
    control_plane: ControlPlane,
    namespace: str,
    wait_for: Callable[..., Any],
    spec: dict[str, Any],
    field: str,
) -> None:
    group = f"{namespace}.smoke.dra-operator.io"
    crd = _crd(group)
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    control_plane.request("POST", crds, crd)
    try:
        wait_for(
            lambda: any(
                c["type"] == "Established" and c["status"] == "True"
                for c in control_plane.request("GET", f"{crds}/{crd['metadata']['name']}")
                .get("status", {})
                .get("conditions", [])
            ),
            timeout=30,
            message="the CRD to be Established",
        )
        widgets = f"/apis/{group}/v1/namespaces/{namespace}/widgets"

        def create(name: str, body_spec: dict[str, Any]) -> Any:
            body = {
                "apiVersion": f"{group}/v1",
                "kind": "Widget",
                "metadata": {"name": name},
                "spec": body_spec,
            }
            return control_plane.request("POST", widgets, body)

        # Discovery of a new group can lag Established by a moment: retry the valid create until it is served.
        wait_for(lambda: create("valid", {"size": 2}), timeout=30, message="a valid Widget to be accepted")
        with pytest.raises(ApiError) as rejected:
            create("invalid", spec)
        assert rejected.value.status == 422
        assert field in rejected.value.body["message"]
    finally:
        control_plane.request("DELETE", f"{crds}/{crd['metadata']['name']}")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_a_second_control_plane_runs_alongside_and_stops_without_leftovers(
    control_plane: ControlPlane,
) -> None:
    with ControlPlane(bin_dir=control_plane.bin_dir) as second:
        assert second.server != control_plane.server
        ports = list(second.ports.values())
        pids = list(second.pids.values())
        assert len(pids) == 4
        run_dir = second.run_dir
        assert second.request("GET", "/api/v1/namespaces/default")["metadata"]["name"] == "default"
        assert all(_listening(port) for port in ports)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not any(_listening(port) for port in ports)
    assert not run_dir.exists()
    # The first control plane is untouched.
    assert control_plane.request("GET", "/api/v1/namespaces/default")["metadata"]["name"] == "default"
