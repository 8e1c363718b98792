"""The product on every Kubernetes release it claims: the version matrix of build.RELEASES (1.30 to 1.37).

Each release runs a control plane of its own, built from Go modules at that tag with its own etcd (the
default release reuses the session's). On each: the CRDs install and refuse bad input; the Pod API's claim
syntax of that release is admitted, gated and mutated (Pods and workload templates) and the other syntax fails
loudly; the seed walkthrough runs end to end, release and clean-up included; `helm install` of the chart
(policies included) works; and where built-in DRA is on (1.34+) it and the operator leave each other's
objects alone, while before 1.34 every claim reference is ours.

The `plane` fixture (conftest) gives the releases: `DRA_OPERATOR_VERSIONS=1.30,1.37` limits them (default:
all). test_admission_policies runs on every release too.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_crds_admission as crd_cases
import yaml
from helpers import get_or_none, install_crds, operator_running
from test_operator_e2e import Cluster, local_operator, pod, seed_walkthrough, slice_for, ungated

from dra_operator.admission import names
from dra_operator.api.pod import ONE_OF_MESSAGE
from dra_operator.controlplane import (
    ApiError,
    ControlPlane,
    in_claim_form,
    node_manifest,
    wait_until,
)
from dra_operator.operator.local import LocalOperator
from dra_operator.tools.helm import chart_dir, ensure_helm, isolated_env, run_helm

Json = dict[str, Any]
WaitFor = Callable[..., Any]
BUILTIN = "/apis/resource.k8s.io/v1"
OURS = "/apis/resource.dra-operator.io/v1"
TEMPLATE = "example-resource-claim-template"


@pytest.fixture(scope="module")
def minor(plane: ControlPlane) -> int:
    return plane.release.minor


@pytest.fixture(scope="module")
def crds(plane: ControlPlane) -> None:
    install_crds(plane.kubectl)


@pytest.fixture(scope="module")
def operator(
    plane: ControlPlane, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalOperator]:
    op = local_operator(plane, tmp_path_factory.mktemp(f"operator-{plane.version}"))
    with operator_running(op, plane, wait_until, f" on {plane.version}", log_lines=80) as running:
        yield running


@pytest.fixture(scope="module")
def gpu_nodes(plane: ControlPlane, crds: None) -> Iterator[list[str]]:
    """Two fake nodes, each with two 64Gi and two 32Gi GPUs of driver.example.com (our ResourceSlices)."""
    made = [f"gpu-{uuid.uuid4().hex[:6]}-{index}" for index in range(2)]
    for node in made:
        plane.request("POST", "/api/v1/nodes", node_manifest(node))
        gpus = {"gpu-0": "64Gi", "gpu-1": "64Gi", "gpu-2": "32Gi", "gpu-3": "32Gi"}
        plane.request("POST", f"{OURS}/resourceslices", slice_for(node, gpus))
    yield made
    for node in made:
        with contextlib.suppress(ApiError):
            plane.request("DELETE", f"{OURS}/resourceslices/{node}-driver-example-com")
        with contextlib.suppress(ApiError):
            plane.request("DELETE", f"/api/v1/nodes/{node}")


@pytest.fixture
def ns(plane: ControlPlane) -> Iterator[str]:
    name = f"versions-{uuid.uuid4().hex[:8]}"
    plane.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    with contextlib.suppress(ApiError):
        plane.request("DELETE", f"/api/v1/namespaces/{name}")


def kubectl_of(plane: ControlPlane) -> Callable[..., Any]:
    def run(*args: str, input: str | None = None, check: bool = True) -> Any:
        return plane.kubectl(*args, input=input, check=check)

    return run


def claim_pod(name: str, minor: int, *, form: str | None = None, request: str | None = None) -> Json:
    """A Pod using our seed template, with its claim reference in `form` ("flat" or "source"; default: the
    form release 1.<minor> decodes)."""
    container_ref = {"name": "gpu", **({"request": request} if request else {})}
    obj = pod(name, [{"name": "gpu", "resourceClaimTemplateName": TEMPLATE}])
    obj["spec"]["containers"][0]["resources"]["claims"] = [container_ref]
    form = form or ("source" if minor <= 30 else "flat")
    return in_claim_form(obj, 30) if form == "source" else obj


def dry_run_create(plane: ControlPlane, path: str, body: Json, validation: str = "Strict") -> Json:
    """POST with dryRun=All: admission (our webhook, the policies) runs, nothing is stored."""
    created: Json = plane.request("POST", f"{path}?dryRun=All&fieldValidation={validation}", body)
    return created


# ------------------------------------------------------------------------------------------------- tests


def test_release_is_the_one_asked_for(plane: ControlPlane) -> None:
    version = json.loads(plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == plane.version
    assert version["clientVersion"]["gitVersion"] == plane.version


@pytest.mark.parametrize("obj", [g[1] for g in crd_cases.GOOD], ids=[g[0] for g in crd_cases.GOOD])
def test_crds_accept_good_objects(plane: ControlPlane, crds: None, ns: str, obj: Json) -> None:
    # A name of its own: cluster-scoped objects of the same name may exist (the default release's plane is
    # shared with the other modules, which create the seed's DeviceClass).
    named = {
        **obj,
        "metadata": {**obj["metadata"], "name": f"{obj['metadata']['name']}-{uuid.uuid4().hex[:6]}"},
    }
    result = crd_cases._dry_run(kubectl_of(plane), ns, named)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("obj", "expected"), [b[1:] for b in crd_cases.BAD], ids=[b[0] for b in crd_cases.BAD]
)
def test_crds_refuse_bad_objects(
    plane: ControlPlane, crds: None, ns: str, obj: Json, expected: list[str]
) -> None:
    result = crd_cases._dry_run(kubectl_of(plane), ns, obj)
    assert result.returncode != 0, f"accepted on {plane.version}: {result.stdout}"
    for part in expected:
        assert part in result.stderr, result.stderr


def test_crd_printer_columns_and_category(plane: ControlPlane, crds: None, ns: str) -> None:
    crd_cases.test_kubectl_names_columns_and_category(None, kubectl_of(plane), ns)


def test_kubectl_explain_describes_our_fields(plane: ControlPlane, crds: None, ns: str) -> None:
    crd_cases.test_kubectl_explain_describes_our_kinds_and_fields(None, kubectl_of(plane), ns)


def test_crds_keep_immutable_fields(plane: ControlPlane, crds: None, ns: str) -> None:
    # Transition rules (oldSelf) are GA from 1.29: every release of the matrix enforces them.
    crd_cases.test_updates_keep_what_kubernetes_keeps_immutable(None, kubectl_of(plane), ns)


@pytest.mark.parametrize("form", ["flat", "source"])
def test_pod_claim_syntax_of_the_release(
    plane: ControlPlane, operator: LocalOperator, ns: str, minor: int, form: str
) -> None:
    """The release's own syntax is admitted and moved to our annotation, gated and labelled; the other one is
    refused: by the apiserver's strict field validation (kubectl's default), and by our webhook when the
    client turns validation off and the apiserver drops the field it cannot decode."""
    path = f"/api/v1/namespaces/{ns}/pods"
    body = claim_pod("syntax", minor, form=form)
    decodable = (form == "source") == (minor <= 30)
    if decodable:
        created = dry_run_create(plane, path, body)
        assert "resourceClaims" not in created["spec"]
        assert not ungated(created)
        assert created["metadata"]["labels"][names.MANAGED_LABEL] == "true"
        manifest = json.loads(created["metadata"]["annotations"][names.CLAIMS_ANNOTATION])
        assert manifest["resourceClaims"] == [{"name": "gpu", "resourceClaimTemplateName": TEMPLATE}]
        assert manifest["containers"] == {"main": [{"name": "gpu"}]}
        return
    stray = "source" if form == "source" else "resourceClaimTemplateName"
    with pytest.raises(ApiError) as strict:
        dry_run_create(plane, path, body)
    assert strict.value.status == 400
    assert f'unknown field "spec.resourceClaims[0].{stray}"' in str(strict.value.body)
    with pytest.raises(ApiError) as lax:
        dry_run_create(plane, path, body, validation="Ignore")
    assert ONE_OF_MESSAGE in str(lax.value.body), lax.value.body


def test_container_claim_request_field(
    plane: ControlPlane, operator: LocalOperator, ns: str, minor: int
) -> None:
    """`resources.claims[].request` (one request of a claim) exists from 1.31 on (with the flat fields, KEP
    4381): on 1.30 strict validation refuses it, and a lax client's Pod is refused by our webhook rather than
    given the whole claim."""
    path = f"/api/v1/namespaces/{ns}/pods"
    body = claim_pod("request", minor, request="gpu")
    if minor > 30:
        created = dry_run_create(plane, path, body)
        manifest = json.loads(created["metadata"]["annotations"][names.CLAIMS_ANNOTATION])
        assert manifest["containers"] == {"main": [{"name": "gpu", "request": "gpu"}]}
        return
    with pytest.raises(ApiError) as strict:
        dry_run_create(plane, path, body)
    assert 'unknown field "spec.containers[0].resources.claims[0].request"' in str(strict.value.body)


def test_workload_templates_are_mutated(
    plane: ControlPlane, operator: LocalOperator, ns: str, minor: int
) -> None:
    """The seed's Job in the release's syntax: its Pod template is mutated so that its Pods are born gated.
    In the other syntax it is refused like a Pod (a lax client's Job would otherwise make Pods without
    claims: on 1.30 the Job controller copies a template the apiserver has already stripped)."""
    jobs = f"/apis/batch/v1/namespaces/{ns}/jobs"
    written = yaml.safe_load((crd_cases.SEED / "dra-example-job.yaml").read_text())
    created = dry_run_create(plane, jobs, in_claim_form(written, minor))
    template = created["spec"]["template"]
    assert "resourceClaims" not in template["spec"]
    assert [g["name"] for g in template["spec"]["schedulingGates"]] == [names.SCHEDULING_GATE]
    manifest = json.loads(template["metadata"]["annotations"][names.CLAIMS_ANNOTATION])
    assert {r["name"] for r in manifest["resourceClaims"]} == {"separate-gpu-claim", "shared-gpu-claim"}

    other = in_claim_form(written, 30) if minor > 30 else written
    with pytest.raises(ApiError) as strict:
        dry_run_create(plane, jobs, other)
    assert strict.value.status == 400 and "unknown field" in str(strict.value.body)
    with pytest.raises(ApiError) as lax:
        dry_run_create(plane, jobs, other, validation="Ignore")
    assert ONE_OF_MESSAGE in str(lax.value.body), lax.value.body


def test_seed_walkthrough(
    plane: ControlPlane, operator: LocalOperator, gpu_nodes: list[str], ns: str, minor: int, wait_for: WaitFor
) -> None:
    cluster = Cluster(plane, ns)
    try:
        seed_walkthrough(
            cluster, gpu_nodes, kubectl_of(plane), wait_for, pod_form=lambda obj: in_claim_form(obj, minor)
        )
    finally:
        for p in cluster.items(cluster.pods_path()):
            cluster.delete(cluster.pods_path(p["metadata"]["name"]))


def test_builtin_dra_and_ours_leave_each_other_alone(
    plane: ControlPlane, operator: LocalOperator, gpu_nodes: list[str], ns: str, minor: int, wait_for: WaitFor
) -> None:
    """1.34+ serves resource.k8s.io/v1 with built-in DRA on: a Pod of each kind in one namespace, each
    allocated by its own side only. Before 1.34 (built-in DRA off unless a feature gate is set, and then not
    at v1) every claim reference is ours, including a name that exists nowhere yet."""
    cluster = Cluster(plane, ns)
    served = get_or_none(plane, BUILTIN) is not None
    assert served == (minor >= 34), f"resource.k8s.io/v1 served: {served} on {plane.version}"
    if not served:
        created = cluster.create(
            cluster.pods_path(),
            in_claim_form(pod("nowhere", [{"name": "x", "resourceClaimName": "nowhere"}]), minor),
        )
        assert "resourceClaims" not in created["spec"] and not ungated(created)
        wait_for(
            lambda: cluster.events("nowhere", "ClaimNotFound"), timeout=30, message="ClaimNotFound on the Pod"
        )
        cluster.delete(cluster.pods_path("nowhere"))
        return

    node = gpu_nodes[0]
    driver = f"builtin-{uuid.uuid4().hex[:4]}.example.com"
    klass = f"builtin-{uuid.uuid4().hex[:6]}"
    plane.request(
        "POST",
        f"{BUILTIN}/deviceclasses",
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "DeviceClass",
            "metadata": {"name": klass},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{driver}"'}}]},
        },
    )
    slice_name = f"{node}-{driver}".replace(".", "-")
    plane.request(
        "POST",
        f"{BUILTIN}/resourceslices",
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {"name": slice_name},
            "spec": {
                "driver": driver,
                "nodeName": node,
                "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                "devices": [{"name": "dev-0"}],
            },
        },
    )
    try:
        plane.request(
            "POST",
            f"{BUILTIN}/namespaces/{ns}/resourceclaimtemplates",
            {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceClaimTemplate",
                "metadata": {"name": "builtin-template"},
                "spec": {
                    "spec": {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": klass}}]}}
                },
            },
        )
        if get_or_none(plane, f"{OURS}/namespaces/{ns}/resourceclaimtemplates/{TEMPLATE}") is None:
            cluster.create(
                cluster.ours("resourceclaimtemplates"), crd_cases._seed("resourceclaimtemplate.yaml")
            )
        theirs = cluster.create(
            cluster.pods_path(),
            pod("theirs", [{"name": "b", "resourceClaimTemplateName": "builtin-template"}]),
        )
        assert [r["name"] for r in theirs["spec"]["resourceClaims"]] == ["b"], "built-in references stay"
        assert names.CLAIMS_ANNOTATION not in (theirs["metadata"].get("annotations") or {})
        assert not theirs["spec"].get("schedulingGates")
        cluster.create(cluster.pods_path(), claim_pod("ours", minor))

        def bound(name: str) -> Json | None:
            found = cluster.get(cluster.pods_path(name))
            return found if found and found["spec"].get("nodeName") else None

        theirs = wait_for(
            lambda: bound("theirs"), timeout=60, message="kube-scheduler to place the built-in Pod"
        )
        ours = wait_for(lambda: bound("ours"), timeout=60, message="our Pod to be allocated and bound")
        assert theirs["spec"]["nodeName"] == node
        builtin_claims = plane.request("GET", f"{BUILTIN}/namespaces/{ns}/resourceclaims")["items"]
        assert [c["metadata"]["ownerReferences"][0]["name"] for c in builtin_claims] == ["theirs"]
        (builtin_claim,) = builtin_claims
        assert builtin_claim["status"]["allocation"]["devices"]["results"][0]["device"] == "dev-0"
        assert not any(f.startswith(names.PREFIX) for f in builtin_claim["metadata"].get("finalizers") or [])
        assert not any(k.startswith(names.PREFIX) for k in builtin_claim["metadata"].get("annotations") or {})
        our_claims = cluster.claims()
        assert [c["metadata"]["ownerReferences"][0]["name"] for c in our_claims] == ["ours"]
        assert ours["metadata"]["uid"] in {r["uid"] for r in our_claims[0]["status"]["reservedFor"]}
        assert not cluster.events("theirs", "AllocationFailed") and not cluster.events("theirs", "Allocated")
    finally:
        for name in ("theirs", "ours"):
            cluster.delete(cluster.pods_path(name))
        wait_for(
            lambda: (
                not plane.request("GET", f"{BUILTIN}/namespaces/{ns}/resourceclaims")["items"]
                and not cluster.claims()
            ),
            timeout=60,
            message="both sides' generated claims to be deleted",
        )
        for path in (f"{BUILTIN}/resourceslices/{slice_name}", f"{BUILTIN}/deviceclasses/{klass}"):
            with contextlib.suppress(ApiError):
                plane.request("DELETE", path)


def test_helm_install_policies_and_uninstall(
    plane: ControlPlane, crds: None, ns: str, tmp_path: Path, wait_for: WaitFor
) -> None:
    """A real `helm install` of the chart (CRDs, RBAC, webhook configuration, the admission policies), one
    policy checked at work, then `helm uninstall`."""
    helm = ensure_helm()
    env = isolated_env(plane.kubeconfig, tmp_path)
    release = f"v{uuid.uuid4().hex[:6]}"
    notes = run_helm(["install", release, str(chart_dir()), "--namespace", ns], helm=helm, env=env)
    assert "kubectl get deviceclasses.resource.dra-operator.io" in notes
    try:
        policies = plane.request("GET", "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies")[
            "items"
        ]
        ours = sorted(p["metadata"]["name"] for p in policies if p["metadata"]["name"].startswith(release))
        assert [name.removeprefix(f"{release}-dra-operator-") for name in ours] == [
            "admin-access",
            "agent-slices",
            "device-env",
            "pod-metadata",
        ], ours
        forged = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "forged"},
            "spec": {
                "containers": [
                    {
                        "name": "c",
                        "image": "registry.invalid/x:1",
                        "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}],
                    }
                ]
            },
        }
        other = f"forgery-{uuid.uuid4().hex[:6]}"
        plane.request("POST", "/api/v1/namespaces", {"metadata": {"name": other}})

        def refused() -> str | None:
            try:
                dry_run_create(plane, f"/api/v1/namespaces/{other}/pods", forged)
            except ApiError as error:
                return str(error.body)
            return None  # the policy's binding is not in the apiserver's cache yet

        message = wait_for(
            refused, timeout=30, message=f"the device-env policy to refuse a forged Pod on {plane.version}"
        )
        assert "NVIDIA_VISIBLE_DEVICES" in message, message
        with contextlib.suppress(ApiError):
            plane.request("DELETE", f"/api/v1/namespaces/{other}")
    finally:
        # No --wait and no hooks: the Deployment's Pods and the post-delete clean-up Job would sit on fake
        # nodes with no kubelet to run them (the hook runs on real nodes in test_chart_real_nodes).
        run_helm(["uninstall", release, "--namespace", ns, "--no-hooks"], helm=helm, env=env)
    admission = "/apis/admissionregistration.k8s.io/v1"
    for plural in (
        "validatingadmissionpolicies",
        "validatingadmissionpolicybindings",
        "mutatingwebhookconfigurations",
    ):
        left = plane.request("GET", f"{admission}/{plural}")["items"]
        assert not [o for o in left if o["metadata"]["name"].startswith(release)], plural


def test_extended_resource_requests_are_converted(
    plane: ControlPlane, operator: LocalOperator, ns: str, wait_for: WaitFor
) -> None:
    """The webhook's match conditions that list the declared extended resources are valid CEL on every
    release, and a Pod asking for one is mutated to use a generated claim instead."""
    suffix = uuid.uuid4().hex[:6]
    resource, klass = f"example.com/gpu-{suffix}", f"extended-{suffix}"
    plane.request(
        "POST",
        f"{OURS}/deviceclasses",
        {
            "apiVersion": "resource.dra-operator.io/v1",
            "kind": "DeviceClass",
            "metadata": {"name": klass},
            "spec": {"extendedResourceName": resource},
        },
    )
    try:
        config = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/dra-operator"
        wait_for(
            lambda: resource in json.dumps(plane.request("GET", config)["webhooks"][0]["matchConditions"]),
            timeout=30,
            message=f"the webhook configuration to list {resource} on {plane.version}",
        )
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "extended"},
            "spec": {
                "containers": [
                    {"name": "c", "image": "registry.invalid/x:1", "resources": {"limits": {resource: "2"}}}
                ]
            },
        }
        created = dry_run_create(plane, f"/api/v1/namespaces/{ns}/pods", body)
        assert resource not in json.dumps(created["spec"]), created["spec"]
        assert not ungated(created)
        manifest = json.loads(created["metadata"]["annotations"][names.CLAIMS_ANNOTATION])
        assert [r["name"] for r in manifest["resourceClaims"]] == [names.EXTENDED_RESOURCE_CLAIM]
    finally:
        plane.request("DELETE", f"{OURS}/deviceclasses/{klass}")
