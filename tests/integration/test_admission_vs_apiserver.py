"""Admission parity on one control plane: each corpus case (tests/fixtures/admission/corpus.py) dry-run
against the built-in API (core/v1, resource.k8s.io/v1) with no webhook of ours, then against ours (our CRDs
and the operator's mutating and validating webhooks). Our refusal must happen where theirs does, with the
same field path and detail; good inputs pass both."""

from __future__ import annotations

import contextlib
import functools
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from subprocess import CompletedProcess
from typing import Any

import pytest
from helpers import install_crds

from dra_operator.api.resource import API_VERSION, UPSTREAM_API_VERSION
from dra_operator.controlplane import ApiError, ControlPlane, polling
from dra_operator.operator.local import LocalOperator
from fixtures.admission import corpus

Verdict = tuple[bool, str]  # (accepted, kubectl's stderr)
CONFIGURATIONS = ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")


def _dry_run(control_plane: ControlPlane, namespace: str, obj: dict[str, Any]) -> Verdict:
    result: CompletedProcess[str] = control_plane.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(obj), check=False
    )
    return result.returncode == 0, result.stderr


def _ours(obj: dict[str, Any]) -> dict[str, Any]:
    if obj.get("apiVersion") == UPSTREAM_API_VERSION:
        return {**obj, "apiVersion": API_VERSION}
    return obj


def _delete_configurations(control_plane: ControlPlane) -> None:
    for plural in CONFIGURATIONS:
        with contextlib.suppress(ApiError):
            control_plane.request("DELETE", f"/apis/admissionregistration.k8s.io/v1/{plural}/dra-operator")


@dataclass
class Parity:
    namespace: str
    builtin: dict[str, Verdict]  # case id -> the built-in API's verdict, taken before our webhooks existed
    stored: str  # a DeviceClass of ours with a selector that does not compile, stored before the webhook


@pytest.fixture(scope="module")
def parity(control_plane: ControlPlane) -> Iterator[Parity]:
    namespace = f"admission-parity-{uuid.uuid4().hex[:6]}"
    control_plane.request("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
    _delete_configurations(control_plane)  # the built-in side must meet no webhook of ours
    builtin = {case.id: _dry_run(control_plane, namespace, case.obj) for case in corpus.CASES}
    install_crds(control_plane.kubectl)
    stored = {**corpus.device_class("device.driver"), "apiVersion": API_VERSION}
    stored["metadata"] = {"name": f"parity-stored-{uuid.uuid4().hex[:6]}"}
    control_plane.kubectl("create", "-f", "-", input=json.dumps(stored))
    yield Parity(namespace, builtin, stored["metadata"]["name"])
    control_plane.kubectl("delete", f"deviceclasses.resource.dra-operator.io/{stored['metadata']['name']}")
    with contextlib.suppress(ApiError):
        control_plane.request("DELETE", f"/api/v1/namespaces/{namespace}")


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane, parity: Parity, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalOperator]:
    """One operator (webhooks registered) for the whole corpus, started after the built-in verdicts."""
    log_dir = tmp_path_factory.mktemp("admission-operator")
    op = LocalOperator(
        control_plane.kubeconfig,
        extra_args=(f"--lease-namespace={parity.namespace}",),
        log_file=log_dir / "op.log",
    ).start()
    try:
        op.wait_ready(timeout=90)
        # The apiserver picks new configurations up through an informer: wait until both webhooks answer.
        probes = [c for c in corpus.CASES if c.refused is not None and c.divergence is None]

        def refused(probe: Any) -> bool:
            return "denied the request" in _dry_run(control_plane, parity.namespace, _ours(probe.obj))[1]

        for kind in ("Pod", "DeviceClass"):
            probe = next(c for c in probes if c.kind == kind)
            polling.wait_until(functools.partial(refused, probe), 30, f"our webhook to refuse {probe.id!r}")
        yield op
    finally:
        print(f"--- operator log ({op.log_file}) ---\n{op.log(80)}")
        op.stop()
        _delete_configurations(control_plane)


def test_the_corpus_covers_pods_workloads_and_every_kind_with_selectors() -> None:
    kinds = {case.kind for case in corpus.CASES if case.refused is not None}
    assert kinds >= {
        "Pod",
        "Job",
        "Deployment",
        "CronJob",
        "DeviceClass",
        "ResourceClaim",
        "ResourceClaimTemplate",
    }
    assert len([c for c in corpus.CASES if c.refused is not None]) >= 40


@pytest.mark.parametrize("case", corpus.CASES, ids=lambda c: c.id)
def test_refused_where_the_apiserver_refuses(
    case: Any, control_plane: ControlPlane, parity: Parity, operator: LocalOperator
) -> None:
    builtin_ok, builtin_err = parity.builtin[case.id]
    ours_ok, ours_err = _dry_run(control_plane, parity.namespace, _ours(case.obj))
    if case.refused is None:
        assert builtin_ok, f"the apiserver refused a good case: {builtin_err}"
        assert ours_ok, f"we refused a good case: {ours_err}"
        return
    assert not builtin_ok and case.refused in builtin_err, f"the apiserver changed its mind: {builtin_err}"
    if case.divergence is not None:
        assert ours_ok, f"divergence {case.id!r} is gone (we refuse now: update the corpus): {ours_err}"
        return
    assert not ours_ok, "we accepted what the apiserver refuses"
    assert case.expected_ours in ours_err, ours_err


def test_updates_check_only_what_changed(
    control_plane: ControlPlane, kubectl: Any, parity: Parity, operator: LocalOperator
) -> None:
    """A DeviceClass (mutable) is checked again when its spec changes: a bad new selector is refused, while
    metadata writes pass, even on an object whose selector was stored before the webhook existed."""
    resource = "deviceclasses.resource.dra-operator.io"
    labelled = kubectl("label", resource, parity.stored, "team=ml", check=False)
    assert labelled.returncode == 0, labelled.stderr
    name = f"parity-{uuid.uuid4().hex[:6]}"
    good = {**corpus.device_class(corpus.GOOD), "apiVersion": API_VERSION, "metadata": {"name": name}}
    kubectl("create", "-f", "-", input=json.dumps(good))
    try:
        patch = json.dumps(
            [{"op": "add", "path": "/spec/selectors/-", "value": {"cel": {"expression": "1"}}}]
        )
        refused = kubectl("patch", resource, name, "--type=json", "-p", patch, check=False)
        assert refused.returncode != 0
        assert 'spec.selectors[1].cel.expression: Invalid value: "1": must evaluate to bool' in refused.stderr
        renamed = json.dumps([{"op": "replace", "path": "/spec/selectors/0/cel/expression", "value": "true"}])
        assert kubectl("patch", resource, name, "--type=json", "-p", renamed, check=False).returncode == 0
    finally:
        kubectl("delete", resource, name, check=False)
