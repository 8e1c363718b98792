"""`dra-operator check` against a real API server: every part ok with the operator running, then what
breaks is named once it has stopped and an older chart's CRD is in place; the API server's own count of the
failed webhook call then fires the chart's alert for it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from helpers import install_crds, strip_claim_status_default

from dra_operator.controlplane import ApiError, ControlPlane, gpu_slice_manifest
from dra_operator.operator.local import LocalOperator
from dra_operator.tools.monitoring import chart_rule, run_rule_tests

WaitFor = Callable[..., Any]
LEASE = "default/dra-operator"  # what a LocalOperator with --lease-namespace=default holds; not labelled
RULE_TESTS = Path(__file__).parent.parent / "fixtures" / "prometheus" / "alerts.test.yaml"


def check(cp: ControlPlane, namespace: str) -> tuple[int, dict[str, str]]:
    """Run the command; its exit status and each part's line (`part -> verdict detail`)."""
    result = subprocess.run(
        [sys.executable, "-m", "dra_operator.cli", "check", "--kubeconfig", str(cp.kubeconfig),
         "--namespace", namespace, "--lease", LEASE],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert not result.stderr.strip(), result.stderr
    parts = {}
    for line in result.stdout.splitlines():
        verdict, part, detail = line.split(None, 2)
        parts[part] = f"{verdict} {detail}"
    return result.returncode, parts


def alert_fires_on(series: str, alert: str, work: Path) -> None:
    """`alert` of the chart's PrometheusRule fires on `series` (a real series name with its labels) counting
    up, as the rule tests (tests/fixtures/prometheus/alerts.test.yaml) expect it to on their own series."""
    fixture = yaml.safe_load(RULE_TESTS.read_text())
    case, expected = next(
        (test, c)
        for test in fixture["tests"]
        for c in test["alert_rule_test"]
        if c["alertname"] == alert and c["exp_alerts"]
    )
    test = {"interval": case["interval"], "input_series": [{"series": series, "values": "0+1x30"}]}
    test["alert_rule_test"] = [expected]
    result = run_rule_tests(chart_rule("rel", "gpu-system"), {**fixture, "tests": [test]}, work)
    assert result.returncode == 0, f"{series}\n{result.stdout}{result.stderr}"


def test_check_passes_on_a_working_installation_and_names_what_broke(
    control_plane: ControlPlane,
    namespace: str,
    make_node: Callable[..., Any],
    tmp_path: Path,
    wait_for: WaitFor,
) -> None:
    cp = control_plane
    install_crds(cp.kubectl)
    node = make_node(f"check-{namespace}")["metadata"]["name"]
    slice_path = "/apis/resource.dra-operator.io/v1/resourceslices"
    created = cp.request("POST", slice_path, gpu_slice_manifest(node, {"gpu-0": "64Gi", "gpu-1": "64Gi"}))
    operator = LocalOperator(
        cp.kubeconfig,
        extra_args=("--lease-namespace=default", "--lease-seconds=5"),
        log_file=tmp_path / "operator.log",
    ).start()
    try:
        wait_for(operator.ready, timeout=90, message="the operator to be ready and leading")
        status, parts = wait_for(
            lambda: (found := check(cp, namespace))[0] == 0 and found,
            timeout=60,
            message="check to pass with the operator running",
        )
        assert set(parts) == {"API", "CRDs", "leader", "webhook", "devices"}
        assert all(line.startswith("ok ") for line in parts.values()), parts
        assert "held by" in parts["leader"] and "gated" in parts["webhook"]
        assert cp.request("GET", f"/api/v1/namespaces/{namespace}/pods")["items"] == [], (
            "a dry run stores nothing"
        )

        # ---- the operator gone (its webhook configuration stays, failing closed) and an older CRD ----
        operator.stop()
        strip_claim_status_default(cp)
        status, parts = wait_for(
            lambda: (found := check(cp, namespace))[1]["leader"].startswith("FAIL") and found,
            timeout=60,
            message="check to see the Lease expire",
        )
        assert status == 1
        assert parts["API"].startswith("ok ") and parts["devices"].startswith("ok ")
        assert (
            parts["CRDs"].startswith("warn ") and "resourceclaims.resource.dra-operator.io" in parts["CRDs"]
        )
        assert parts["webhook"].startswith("FAIL ") and "failed calling webhook" in parts["webhook"]

        # The API server counted that failed call where the chart's DRAOperatorWebhookCallsFailing reads it.
        failing = [
            line.rpartition(" ")[0]
            for line in cp.kubectl("get", "--raw", "/metrics").stdout.splitlines()
            if line.startswith("apiserver_admission_webhook_rejection_count{")
            and 'name="pods.resource.dra-operator.io"' in line
            and 'error_type="calling_webhook_error"' in line
        ]
        assert failing, "no failed call to the Pod webhook in the API server's metrics"
        alert_fires_on(failing[0], "DRAOperatorWebhookCallsFailing", tmp_path)
    finally:
        operator.stop()
        install_crds(cp.kubectl)
        for plural in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
            with contextlib.suppress(ApiError):
                cp.request("DELETE", f"/apis/admissionregistration.k8s.io/v1/{plural}/dra-operator")
        with contextlib.suppress(ApiError):
            cp.request("DELETE", f"{slice_path}/{created['metadata']['name']}")
