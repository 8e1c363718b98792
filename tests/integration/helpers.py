"""Helpers the integration tests share: seed manifests, GETs, CRDs (the operator process: operator.local)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import yaml

from dra_operator import crds
from dra_operator.controlplane import ApiError, ControlPlane
from dra_operator.operator.local import LocalOperator

REPO = Path(__file__).resolve().parents[2]
CLAIM_CRD = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/resourceclaims.resource.dra-operator.io"
# Where a CRD keeps its status default (the ResourceClaim CRD's `{state: pending}`): JSON-patch path.
STATUS_DEFAULT = "/spec/versions/0/schema/openAPIV3Schema/properties/status/default"

SEED = REPO / "tests" / "fixtures" / "seed"
Json = dict[str, Any]
Kubectl = Callable[..., CompletedProcess[str]]


def claim_status_schema(cp: ControlPlane) -> Json:
    """The ResourceClaim CRD's schema of `status`, as the API server has it now."""
    crd = cp.request("GET", CLAIM_CRD)
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"])


def strip_claim_status_default(cp: ControlPlane) -> None:
    """Leave the ResourceClaim CRD as a chart older than its status default installed it."""
    cp.request(
        "PATCH",
        CLAIM_CRD,
        [{"op": "remove", "path": STATUS_DEFAULT}],
        content_type="application/json-patch+json",
    )
    assert "default" not in claim_status_schema(cp)


def token_kubeconfig(cp: ControlPlane, account: str, namespace: str, path: Path, *token_args: str) -> Path:
    """Write at `path` a kubeconfig authenticating as the ServiceAccount with a TokenRequest's token (`kubectl
    create token`, given `token_args` such as a bound object), its namespace the default."""
    created = cp.kubectl("create", "token", account, "-n", namespace, "--duration=2h", *token_args)
    token = created.stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "cp", "cluster": {"server": cp.server, "certificate-authority": str(cp.ca_file)}}
        ],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "cp", "user": account, "namespace": namespace}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def seed(name: str) -> Json:
    """A manifest from tests/fixtures/seed, as written there."""
    obj: Json = yaml.safe_load((SEED / name).read_text())
    return obj


def one_device_template(name: str, device_class: str) -> Json:
    """A ResourceClaimTemplate of ours asking for one device of `device_class`."""
    return {
        "apiVersion": "resource.dra-operator.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name},
        "spec": {
            "spec": {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": device_class}}]}}
        },
    }


def get_or_none(cp: ControlPlane, path: str) -> Json | None:
    """GET `path` as the admin; None when it does not exist (404), any other error raised."""
    try:
        found: Json = cp.request("GET", path)
    except ApiError as error:
        if error.status == 404:
            return None
        raise
    return found


def install_crds(kubectl: Kubectl) -> None:
    """Apply crds/ (server-side, idempotent) and wait until every CRD is Established."""
    applied = kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"), check=False)
    assert applied.returncode == 0, f"the apiserver refused crds/: {applied.stderr}"
    for crd in crds.generate().values():
        kubectl("wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}", "--timeout=60s")


@contextlib.contextmanager
def operator_running(
    op: LocalOperator, cp: ControlPlane, wait: Callable[..., Any], where: str = "", log_lines: int = 120
) -> Iterator[LocalOperator]:
    """`op` started, ready and leading; afterwards stopped, its log printed (pytest shows it for a failed
    test: what the operator did) and its webhook configurations deleted."""
    op.start()
    try:
        wait(op.ready, timeout=90, message=f"the operator to be ready{where}")
        yield op
    finally:
        print(f"--- operator log{where} ({op.log_file}) ---\n{op.log(log_lines)}")
        op.stop()
        for plural in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
            with contextlib.suppress(ApiError):
                cp.request("DELETE", f"/apis/admissionregistration.k8s.io/v1/{plural}/dra-operator")
