"""`dra-operator crds --apply` as the chart's pre-upgrade hook runs it, on every release of the matrix.

Helm installs crds/ once and never updates them, so an installation from an older chart keeps older CRDs: here
one without the DeviceTaintRule kind and a ResourceClaim CRD without its status default. The hook's Job runs
`dra-operator crds --apply` under the hook's own ServiceAccount and ClusterRole (rendered from the chart); it
creates the missing CRD, restores the changed one, and may touch no other CRD.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers import claim_status_schema, install_crds, strip_claim_status_default, token_kubeconfig

from dra_operator import check
from dra_operator.controlplane import ApiError, ControlPlane
from dra_operator.crds import generate
from dra_operator.tools.helm import template

Json = dict[str, Any]
WaitFor = Callable[..., Any]
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
TAINT_RULES = "devicetaintrules.resource.dra-operator.io"
CLAIMS = "resourceclaims.resource.dra-operator.io"


def hook_rbac(namespace: str) -> tuple[str, list[Json]]:
    """The hook's ServiceAccount name, and its account, ClusterRole and binding as the chart renders them."""
    release = f"crds-{uuid.uuid4().hex[:6]}"
    objects = [
        o
        for o in template(release=release, namespace=namespace)
        if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "crds"
        and o["kind"] != "Job"
    ]
    (account,) = [o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"]
    return account, objects


def apply_as(kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dra_operator.cli", "crds", "--apply", "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def outcomes(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """CRD name -> created / configured / unchanged, from the command's output."""
    found = {}
    for line in result.stdout.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "customresourcedefinition":
            found[words[1]] = words[2]
    return found


def test_apply_brings_an_older_charts_crds_up_to_date_under_the_hooks_rbac(
    plane: ControlPlane, tmp_path: Path, wait_for: WaitFor
) -> None:
    cp = plane
    install_crds(cp.kubectl)
    namespace = f"crds-hook-{uuid.uuid4().hex[:6]}"
    account, objects = hook_rbac(namespace)
    cp.request("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
    try:
        cp.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
        )
        kubeconfig = token_kubeconfig(cp, account, namespace, tmp_path / "hook.kubeconfig")
        user = f"--as=system:serviceaccount:{namespace}:{account}"

        # ---- what an older chart left: no DeviceTaintRule CRD, a claim CRD without its status default ----
        cp.kubectl("delete", "crd", TAINT_RULES, "--wait=true", "--timeout=60s")
        strip_claim_status_default(cp)

        first = apply_as(kubeconfig)
        assert first.returncode == 0, first.stderr
        expected = {crd["metadata"]["name"] for crd in generate().values()}
        assert set(outcomes(first)) == expected
        assert outcomes(first)[TAINT_RULES] == "created"
        assert outcomes(first)[CLAIMS] == "configured"
        assert f"{len(expected)} CRDs established" in first.stdout
        assert claim_status_schema(cp)["default"] == {"state": "pending"}
        claims = cp.request("GET", f"{CRDS}/{CLAIMS}")
        rules = cp.request("GET", f"{CRDS}/{TAINT_RULES}")
        assert {"type": "Established", "status": "True"}.items() <= next(
            c for c in rules["status"]["conditions"] if c["type"] == "Established"
        ).items()

        def listed() -> Json | None:
            try:
                return dict(cp.request("GET", "/apis/resource.dra-operator.io/v1/devicetaintrules"))
            except ApiError as error:  # 429 while the new kind's storage initializes, right after Established
                if error.status == 429:
                    return None
                raise

        assert wait_for(listed, timeout=30, message="the new kind served")["items"] == []

        # ---- nothing left to change: a second run writes nothing ----
        second = apply_as(kubeconfig)
        assert second.returncode == 0, second.stderr
        assert outcomes(second) == dict.fromkeys(expected, "unchanged")
        after = cp.request("GET", f"{CRDS}/{CLAIMS}")
        assert after["metadata"]["resourceVersion"] == claims["metadata"]["resourceVersion"]
        # What the API server answers for applied CRDs is what `dra-operator check` finds current.
        generated = {crd["metadata"]["name"]: crd for crd in generate().values()}
        installed = {name: cp.request("GET", f"{CRDS}/{name}") for name in generated}
        assert check.crds_current(installed, generated).verdict == "ok"

        # ---- the hook's RBAC: this chart's CRDs by name, and nothing else ----
        def can(*args: str) -> bool:
            return cp.kubectl("auth", "can-i", user, *args, check=False).stdout.strip() == "yes"

        assert can("patch", f"customresourcedefinitions/{CLAIMS}")
        assert not can("patch", "customresourcedefinitions/certificates.cert-manager.io")
        assert not can("create", "customresourcedefinitions")
        assert not can("delete", f"customresourcedefinitions/{CLAIMS}")
        assert not can("list", "customresourcedefinitions")
        assert not can("get", "resourceclaims.resource.dra-operator.io", "--all-namespaces")
    finally:
        install_crds(cp.kubectl)  # whatever happened, later tests find the CRDs as crds/ has them
        for obj in objects:
            if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                with contextlib.suppress(ApiError):
                    cp.request(
                        "DELETE",
                        f"/apis/rbac.authorization.k8s.io/v1/{obj['kind'].lower()}s/{obj['metadata']['name']}",
                    )
        with contextlib.suppress(ApiError):
            cp.request("DELETE", f"/api/v1/namespaces/{namespace}")
