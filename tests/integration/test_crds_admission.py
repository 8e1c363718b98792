"""The generated CRDs on a real apiserver: accepted (CEL cost in budget), good objects in, bad ones out."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
import yaml
from helpers import install_crds

from dra_operator.api import crdgen
from dra_operator.api.resource import (
    API_VERSION,
    GROUP,
    UPSTREAM_API_VERSION,
    ExactDeviceRequest,
    ResourceSliceStatus,
)
from dra_operator.controlplane import polling
from dra_operator.crds import field_docs

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "tests" / "fixtures" / "seed"

Kubectl = Callable[..., CompletedProcess[str]]


@pytest.fixture
def crds(kubectl: Kubectl) -> None:
    install_crds(kubectl)


def _dry_run(kubectl: Kubectl, namespace: str, obj: dict[str, Any], *flags: str) -> CompletedProcess[str]:
    args = ["create", "--dry-run=server", "-n", namespace, "-o", "json", *flags, "-f", "-"]
    return kubectl(*args, input=json.dumps(obj), check=False)


def _claim(requests: list[dict[str, Any]], **devices: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourceClaim",
        "metadata": {"name": "c"},
        "spec": {"devices": {"requests": requests, **devices}},
    }


def _seed(name: str, folder: Path = SEED) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((folder / name).read_text())
    obj["apiVersion"] = API_VERSION
    return obj


_SLICE_SPEC = {
    "driver": "driver.example.com",
    "pool": {"name": "node-1", "generation": 0, "resourceSliceCount": 1},
}

GOOD: list[tuple[str, dict[str, Any]]] = [
    ("seed device class", _seed("deviceclass.yaml")),
    ("seed claim (indentation fixed)", _seed("resourceclaim.yaml")),
    ("seed claim template", _seed("resourceclaimtemplate.yaml")),
    (
        "firstAvailable with constraint",
        _claim(
            [
                {"name": "a", "exactly": {"deviceClassName": "c", "count": 2}},
                {"name": "b", "firstAvailable": [{"name": "x", "deviceClassName": "c"}]},
            ],
            constraints=[{"requests": ["a", "b/x"], "matchAttribute": "driver.example.com/numa"}],
        ),
    ),
    (
        "node-local slice",
        {
            "apiVersion": API_VERSION,
            "kind": "ResourceSlice",
            "metadata": {"name": "s"},
            "spec": {
                **_SLICE_SPEC,
                "nodeName": "node-1",
                "devices": [
                    {
                        "name": "gpu-0",
                        "attributes": {"type": {"string": "gpu"}, "driverVersion": {"version": "1.2.3"}},
                        "capacity": {"memory": {"value": "64Gi"}},
                    }
                ],
            },
        },
    ),
]


@pytest.mark.parametrize("obj", [g[1] for g in GOOD], ids=[g[0] for g in GOOD])
def test_good_objects_are_accepted(crds: None, kubectl: Kubectl, namespace: str, obj: dict[str, Any]) -> None:
    # A name of its own: a cluster-scoped seed object (the DeviceClass) may exist already, created by another
    # module on the shared control plane, and a dry-run create of it would answer AlreadyExists.
    obj = {**obj, "metadata": {**obj["metadata"], "name": f"good-{namespace[-6:]}"}}
    result = _dry_run(kubectl, namespace, obj)
    assert result.returncode == 0, result.stderr
    stored = json.loads(result.stdout)
    assert stored["kind"] == obj["kind"]
    if obj["kind"] == "ResourceClaim":
        # The CRD's defaulting matches Kubernetes': allocationMode ExactCount unless set.
        for request in stored["spec"]["devices"]["requests"]:
            if "exactly" in request:
                assert request["exactly"]["allocationMode"] in ("ExactCount", "All")


def _original_claim() -> dict[str, Any]:
    obj = _seed("resourceclaim.yaml", SEED / "upstream")
    assert (
        (SEED / "upstream" / "resourceclaim.yaml")
        .read_text()
        .startswith(f"apiVersion: {UPSTREAM_API_VERSION}")
    )
    return obj


BAD: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "count 0",
        _claim([{"name": "a", "exactly": {"deviceClassName": "c", "count": 0}}]),
        ["spec.devices.requests[0].exactly.count", "greater than or equal to 1"],
    ),
    (
        "both exactly and firstAvailable",
        _claim(
            [
                {
                    "name": "a",
                    "exactly": {"deviceClassName": "c"},
                    "firstAvailable": [{"name": "x", "deviceClassName": "c"}],
                }
            ]
        ),
        ["exactly one of exactly or firstAvailable must be set"],
    ),
    (
        "neither exactly nor firstAvailable",
        _claim([{"name": "a"}]),
        ["exactly one of exactly or firstAvailable must be set"],
    ),
    (
        "duplicate request names",
        _claim(
            [
                {"name": "a", "exactly": {"deviceClassName": "c"}},
                {"name": "a", "exactly": {"deviceClassName": "d"}},
            ]
        ),
        ["spec.devices.requests[1]", "Duplicate value"],
    ),
    (
        "All with count",
        _claim([{"name": "a", "exactly": {"deviceClassName": "c", "allocationMode": "All", "count": 2}}]),
        ["count must not be set when allocationMode is All"],
    ),
    (
        "constraint names an unknown request",
        _claim(
            [{"name": "a", "exactly": {"deviceClassName": "c"}}],
            constraints=[{"requests": ["zz"], "matchAttribute": "driver.example.com/numa"}],
        ),
        ["each entry of requests must name a request"],
    ),
    (
        # kubectl's default strict field validation stops at decoding, naming the stray field.
        "the seed claim as written",
        _original_claim(),
        ['unknown field "spec.devices.requests[0].exactly.selectors[0].expression"'],
    ),
    (
        "slice with two node scopes",
        {
            "apiVersion": API_VERSION,
            "kind": "ResourceSlice",
            "metadata": {"name": "s"},
            "spec": {**_SLICE_SPEC, "nodeName": "node-1", "allNodes": True},
        },
        ["exactly one of nodeName, nodeSelector, allNodes or perDeviceNodeSelection must be set"],
    ),
    (
        "attribute with two types",
        {
            "apiVersion": API_VERSION,
            "kind": "ResourceSlice",
            "metadata": {"name": "s"},
            "spec": {
                **_SLICE_SPEC,
                "allNodes": True,
                "devices": [{"name": "d", "attributes": {"a": {"int": 1, "string": "x"}}}],
            },
        },
        ["exactly one of int, bool, string or version must be set"],
    ),
]


@pytest.mark.parametrize(("obj", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_objects_are_rejected_with_clear_messages(
    crds: None, kubectl: Kubectl, namespace: str, obj: dict[str, Any], expected: list[str]
) -> None:
    result = _dry_run(kubectl, namespace, obj)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    for part in expected:
        assert part in result.stderr, result.stderr


def test_kubectl_names_columns_and_category(crds: None, kubectl: Kubectl, namespace: str) -> None:
    claim = _seed("resourceclaim.yaml")
    created = json.loads(
        kubectl("create", "-n", namespace, "-o", "json", "-f", "-", input=json.dumps(claim)).stdout
    )
    # No operator runs here: the API server itself shows a claim nobody allocated as pending (status default).
    assert created["status"] == {"state": "pending"}
    table = kubectl("get", "-n", namespace, "drarc").stdout.splitlines()
    assert table[1].split()[:2] == ["example-resource-claim", "pending"]
    status = {"status": {"allocation": {"devices": {}}, "state": "allocated", "nodeName": "node-1"}}
    kubectl(
        "patch", "-n", namespace, f"resourceclaims.{GROUP}", claim["metadata"]["name"],
        "--subresource=status", "--type=merge", "-p", json.dumps(status),
    )  # fmt: skip
    table = kubectl("get", "-n", namespace, "drarc").stdout.splitlines()
    assert table[0].split() == ["NAME", "STATE", "NODE", "AGE"]
    assert table[1].split()[:3] == ["example-resource-claim", "allocated", "node-1"]
    listed = kubectl("get", "dra", "-n", namespace, "-o", "name").stdout.split()
    assert f"resourceclaim.{GROUP}/example-resource-claim" in listed


def test_kubectl_explain_describes_our_kinds_and_fields(crds: None, kubectl: Kubectl, namespace: str) -> None:
    """`kubectl explain` shows the CRDs' descriptions (the models' field docstrings), for the kind and a deep
    field. The API server publishes a new CRD's OpenAPI a moment after it is Established: polled."""
    expected = {
        "resourceclaims": crdgen.KINDS[1].description.split(":")[0],
        "resourceclaims.spec.devices.requests.exactly.count": field_docs(ExactDeviceRequest)["count"],
        "resourceslices.status.free": field_docs(ResourceSliceStatus)["free"],
    }
    for path, text in expected.items():

        def explained(path: str = path, text: str = text) -> bool:
            result = kubectl("explain", f"--api-version={API_VERSION}", path, check=False)
            return " ".join(result.stdout.split()).find(" ".join(text.split())) >= 0

        polling.wait_until(explained, timeout=30, message=f"kubectl explain {path} to show its description")


def test_seed_claim_as_written_gets_the_hint_without_strict_decoding(
    crds: None, kubectl: Kubectl, namespace: str
) -> None:
    # With --validate=warn the stray field is pruned, `cel: null` too, and the schema's rule explains.
    result = _dry_run(kubectl, namespace, _original_claim(), "--validate=warn")
    assert result.returncode != 0, f"accepted: {result.stdout}"
    assert "spec.devices.requests[0].exactly.selectors[0]" in result.stderr
    assert "`expression` must be nested under `cel`" in result.stderr, result.stderr


def _patch(
    kubectl: Kubectl, namespace: str, resource: str, name: str, patch: dict[str, Any], *flags: str
) -> CompletedProcess[str]:
    args = ["patch", "-n", namespace, f"{resource}.{GROUP}", name, "--type=merge", "-p", json.dumps(patch)]
    return kubectl(*args, *flags, check=False)


def test_updates_keep_what_kubernetes_keeps_immutable(crds: None, kubectl: Kubectl, namespace: str) -> None:
    """A claim's spec, a template, a slice's driver, pool and node, and a set allocation cannot change, as
    Kubernetes' update validation says for resource.k8s.io; what may change still can."""
    claim = _seed("resourceclaim.yaml")
    template = _seed("resourceclaimtemplate.yaml")
    slice_ = {
        "apiVersion": API_VERSION,
        "kind": "ResourceSlice",
        "metadata": {"name": f"s-immutable-{uuid.uuid4().hex[:6]}"},
        "spec": {**_SLICE_SPEC, "nodeName": "node-1", "devices": [{"name": "gpu-0"}]},
    }
    for obj in (claim, template, slice_):
        kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(obj))
    try:
        names = (claim["metadata"]["name"], template["metadata"]["name"], slice_["metadata"]["name"])
        _check_immutable(kubectl, namespace, *names)
    finally:  # slices are cluster-scoped: the namespace's removal does not take this one
        kubectl("delete", f"resourceslices.{GROUP}", slice_["metadata"]["name"], "--wait=false", check=False)


def _check_immutable(
    kubectl: Kubectl, namespace: str, claim_name: str, template_name: str, slice_name: str
) -> None:
    def patch(resource: str, name: str, body: dict[str, Any], *flags: str) -> CompletedProcess[str]:
        return _patch(kubectl, namespace, resource, name, body, *flags)

    refusals = [
        (patch("resourceclaims", claim_name, {"spec": {"devices": {"requests": []}}}), "field is immutable"),
        (
            patch("resourceclaimtemplates", template_name, {"spec": {"metadata": {"labels": {"a": "b"}}}}),
            "metadata: field is immutable",
        ),
        (patch("resourceslices", slice_name, {"spec": {"nodeName": "node-2"}}), "nodeName is immutable"),
        (
            patch("resourceslices", slice_name, {"spec": {"driver": "other.example"}}),
            "driver is immutable",
        ),
    ]
    for result, message in refusals:
        assert result.returncode != 0 and message in result.stderr, (result.stdout, result.stderr)

    # An allocation is set once, then may only be removed (the claim deallocated).
    result = {"request": "gpu", "driver": "d.example.com", "pool": "p", "device": "g"}
    allocation = {"devices": {"results": [result]}}
    elsewhere = {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n"]}]}]
    }
    status = "--subresource=status"
    assert patch("resourceclaims", claim_name, {"status": {"allocation": allocation}}, status).returncode == 0
    changed = patch(
        "resourceclaims", claim_name, {"status": {"allocation": {"nodeSelector": elsewhere}}}, status
    )
    assert changed.returncode != 0 and "field is immutable" in changed.stderr, changed.stderr
    assert patch("resourceclaims", claim_name, {"status": {"allocation": None}}, status).returncode == 0

    # A slice's devices and pool generation move freely.
    moved = {"spec": {"devices": [{"name": "gpu-0"}, {"name": "gpu-1"}], "pool": {"generation": 2}}}
    assert patch("resourceslices", slice_name, moved).returncode == 0
