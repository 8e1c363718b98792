"""The verdicts of `dra-operator check`, from API answers (the reading is tested in tests/integration)."""

from __future__ import annotations

import asyncio
import copy
import datetime
from typing import Any

import pytest

from dra_operator import check
from dra_operator.admission import names
from dra_operator.api.crdgen import KINDS
from dra_operator.crds import generate
from dra_operator.kube.rest import KubeError

Json = dict[str, Any]
NOW = datetime.datetime(2026, 12, 7, 12, 0, 0, tzinfo=datetime.UTC)
GENERATED = {c["metadata"]["name"]: c for c in generate().values()}


def discovery(*plurals: str) -> Json:
    return {"resources": [{"name": p} for p in plurals] + [{"name": f"{p}/status"} for p in plurals]}


@pytest.mark.parametrize(
    ("answer", "verdict", "words"),
    [
        (None, "FAIL", "not served"),
        (discovery("deviceclasses", "resourceclaims"), "FAIL", "does not serve devicetaintrules"),
        (discovery(*(k.plural for k in KINDS)), "ok", "serves deviceclasses"),
    ],
)
def test_served(answer: Json | None, verdict: str, words: str) -> None:
    found = check.served(answer)
    assert (found.verdict, words in found.detail) == (verdict, True), found


def as_installed(crd: Json) -> Json:
    """A CRD as the API server answers it: its own metadata and status beside what was applied."""
    answer = copy.deepcopy(crd)
    answer["metadata"].update({"uid": "u", "resourceVersion": "7", "generation": 2})
    answer["spec"]["conversion"] = {"strategy": "None"}
    answer["status"] = {"conditions": [{"type": "Established", "status": "True"}]}
    return answer


def test_crds_current_tells_missing_older_and_current() -> None:
    installed: dict[str, Json | None] = {name: as_installed(crd) for name, crd in GENERATED.items()}
    assert check.crds_current(installed, GENERATED).verdict == "ok"
    older = copy.deepcopy(installed)
    claims = "resourceclaims.resource.dra-operator.io"
    del older[claims]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["default"]  # type: ignore[index]
    found = check.crds_current(older, GENERATED)
    assert found.verdict == "warn" and claims in found.detail and "crds --apply" in found.detail
    older["devicetaintrules.resource.dra-operator.io"] = None
    found = check.crds_current(older, GENERATED)
    assert found.verdict == "FAIL" and "missing: devicetaintrules" in found.detail


def lease(holder: str | None, renewed_ago: float | None, duration: int = 15) -> Json:
    spec: Json = {"leaseDurationSeconds": duration}
    if holder is not None:
        spec["holderIdentity"] = holder
    if renewed_ago is not None:
        spec["renewTime"] = (NOW - datetime.timedelta(seconds=renewed_ago)).isoformat().replace("+00:00", "Z")
    return {"metadata": {"namespace": "dra-system", "name": "dra-operator-leader"}, "spec": spec}


@pytest.mark.parametrize(
    ("leases", "verdict", "words"),
    [
        ([], "warn", "no Lease labelled"),
        ([lease(None, None)], "FAIL", "has no holder"),
        ([lease("pod-a", 40.0)], "FAIL", "last renewed 40s ago by pod-a, over its 15s"),
        ([lease("pod-a", 3.0)], "ok", "held by pod-a, renewed 3s ago"),
        ([lease("old", 400.0), lease("pod-b", 1.0)], "ok", "held by pod-b"),
    ],
)
def test_lease_held(leases: list[Json], verdict: str, words: str) -> None:
    found = check.lease_held(leases, NOW)
    assert (found.verdict, words in found.detail) == (verdict, True), found


@pytest.mark.parametrize(
    ("created", "refusal", "verdict", "words"),
    [
        (None, "failed calling webhook: connection refused", "FAIL", "refused a Pod that uses a claim"),
        (check.probe_pod("ns"), None, "FAIL", "the webhook was not called"),
        (
            {"spec": {"schedulingGates": [{"name": names.SCHEDULING_GATE}]}},
            None,
            "ok",
            "gated for allocation",
        ),
    ],
)
def test_webhook_answer(created: Json | None, refusal: str | None, verdict: str, words: str) -> None:
    found = check.webhook_answer("ns", created, refusal)
    assert (found.verdict, words in found.detail) == (verdict, True), found


def published(node: str, devices: int, status: Json | None = None) -> Json:
    obj: Json = {"spec": {"nodeName": node, "devices": [{"name": f"gpu-{i}"} for i in range(devices)]}}
    if status is not None:
        obj["status"] = status
    return obj


def test_devices_counts_what_the_operator_counted_and_says_what_it_has_not() -> None:
    assert check.devices([]).verdict == "warn"
    counted = {"devices": 8, "allocated": 3, "tainted": 1, "free": 4}
    found = check.devices([published("n1", 8, counted), published("n2", 8, counted)])
    assert found.detail == "2 slices on 2 nodes, 16 devices: 6 allocated, 2 tainted, 8 free"
    found = check.devices([published("n1", 8, counted), published("n2", 4)])
    assert found.verdict == "ok"
    assert found.detail == (
        "2 slices on 2 nodes, 12 devices: 3 allocated, 1 tainted, 4 free (of the 1 slice the operator has "
        "counted so far)"
    )


class ForbiddenCrds:
    """An API server for a user who may not read CRDs but may do the rest; the operator leading."""

    def __init__(self) -> None:
        self.created: list[tuple[str, list[tuple[str, str]] | None]] = []

    async def get(self, path: str) -> Json | None:
        if path.startswith(check.CRDS):
            raise KubeError(
                403, "Forbidden", {"message": "customresourcedefinitions is forbidden"}, path=path
            )
        if path.startswith("/apis/resource.dra-operator.io/"):
            return discovery(*(k.plural for k in KINDS))
        return None

    async def request(
        self, method: str, path: str, body: Any = None, *, query: list[tuple[str, str]] | None = None
    ) -> Json:
        if method == "POST":
            self.created.append((path, query))
            return {**body, "spec": {**body["spec"], "schedulingGates": [{"name": names.SCHEDULING_GATE}]}}
        if "leases" in path:
            renewed = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
            holder = {"holderIdentity": "pod-a", "renewTime": renewed, "leaseDurationSeconds": 15}
            return {"items": [{"metadata": {"namespace": "ns", "name": "lease"}, "spec": holder}]}
        return {"items": []}


def test_a_part_the_user_may_not_read_is_a_warning_and_the_rest_still_runs() -> None:
    kube = ForbiddenCrds()
    findings = asyncio.run(check.run_checks(kube, "team-a", None))  # type: ignore[arg-type]
    verdicts = {f.part: f.verdict for f in findings}
    assert verdicts == {"API": "ok", "CRDs": "warn", "leader": "ok", "webhook": "ok", "devices": "warn"}
    assert "cannot read them: 403" in next(f.detail for f in findings if f.part == "CRDs")
    assert kube.created == [("/api/v1/namespaces/team-a/pods", [("dryRun", "All")])], "only a dry run"
