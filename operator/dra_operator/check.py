"""`dra-operator check`: whether an installation works, one line per part, for a user to run after installing
or when Pods with claims stay Pending.

- **API**: the API server serves the five kinds of resource.dra-operator.io/v1.
- **CRDs**: the installed CRDs are the ones this version generates (an older chart's CRDs differ:
  `dra-operator crds --apply` updates them).
- **leader**: a replica holds the operator's Lease and renews it.
- **webhook**: a Pod that uses a claim, created as a server-side dry run (nothing is stored), comes back gated
  by the operator's webhook: the API server reached the webhook and the webhook answered.
- **devices**: the ResourceSlices published and their device counts (no slice is a warning: are the node
  agents running?).

Each line is `ok`, `warn` or `FAIL`; the exit status is 1 when any part failed. The verdicts are pure
functions of what the API server answered (unit-tested); `run_checks` does the reading.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from dra_operator.admission import names
from dra_operator.api.crdgen import KINDS
from dra_operator.api.group import API_VERSION
from dra_operator.crds import CRDS, generate

if TYPE_CHECKING:
    from dra_operator.kube.client import Kube

Json = dict[str, Any]
Verdict = Literal["ok", "warn", "FAIL"]

LEASES = "/apis/coordination.k8s.io/v1"
#: The label the chart puts on the operator's Lease (and everything else of the release).
RELEASE_LABEL = "app.kubernetes.io/name=dra-operator"
#: The template the dry-run Pod names; it need not exist (a Pod waits for a missing template, gated).
PROBE_TEMPLATE = "dra-operator-check"


@dataclass(frozen=True)
class Finding:
    """One part's verdict and why, printed as one aligned line."""

    verdict: Verdict
    part: str
    detail: str

    def line(self) -> str:
        return f"{self.verdict:<5} {self.part:<8} {self.detail}"


def served(discovery: Json | None) -> Finding:
    """Whether the group's discovery document lists all five kinds."""
    wanted = sorted(kind.plural for kind in KINDS)
    if discovery is None:
        return Finding("FAIL", "API", f"{API_VERSION} is not served: are the CRDs installed (crds/)?")
    listed = {r.get("name") for r in discovery.get("resources") or []}
    missing = [plural for plural in wanted if plural not in listed]
    if missing:
        return Finding("FAIL", "API", f"{API_VERSION} does not serve {', '.join(missing)}: apply crds/")
    return Finding("ok", "API", f"{API_VERSION} serves {', '.join(wanted)}")


def _comparable(crd: Mapping[str, Any]) -> list[Json]:
    """What a CRD's versions say that this version decides: schema, printer columns, subresources."""
    return [
        {
            "name": v.get("name"),
            "schema": v.get("schema"),
            "columns": v.get("additionalPrinterColumns") or [],
            "subresources": v.get("subresources") or {},
        }
        for v in (crd.get("spec") or {}).get("versions") or []
    ]


def crds_current(installed: Mapping[str, Json | None], generated: Mapping[str, Json]) -> Finding:
    """Whether each installed CRD says what this version generates (CRD name -> object, None when absent)."""
    differing = [
        name
        for name, crd in sorted(generated.items())
        if installed.get(name) is not None and _comparable(installed[name] or {}) != _comparable(crd)
    ]
    absent = [name for name in sorted(generated) if installed.get(name) is None]
    if absent:
        return Finding("FAIL", "CRDs", f"missing: {', '.join(absent)}; `dra-operator crds --apply` adds them")
    if differing:
        return Finding(
            "warn",
            "CRDs",
            f"differ from this version's (an older or newer chart?): {', '.join(differing)}; "
            "`dra-operator crds --apply` brings them to this version",
        )
    return Finding("ok", "CRDs", "as this version generates them")


def _time(value: Any) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def lease_held(leases: list[Json], now: datetime.datetime) -> Finding:
    """Whether one of the operator's Leases has a holder that renewed it within its duration."""
    if not leases:
        return Finding(
            "warn",
            "leader",
            f"no Lease labelled {RELEASE_LABEL} (leader election off? name one with --lease)",
        )
    notes = []
    for lease in leases:
        meta, spec = lease.get("metadata") or {}, lease.get("spec") or {}
        where = f"{meta.get('namespace')}/{meta.get('name')}"
        holder = spec.get("holderIdentity")
        renewed = _time(spec.get("renewTime"))
        duration = float(spec.get("leaseDurationSeconds") or 15)
        if not holder or renewed is None:
            notes.append(f"{where} has no holder")
            continue
        age = (now - renewed).total_seconds()
        if age > duration:
            notes.append(f"{where} last renewed {age:.0f}s ago by {holder}, over its {duration:.0f}s")
            continue
        return Finding("ok", "leader", f"{where} held by {holder}, renewed {max(age, 0):.0f}s ago")
    return Finding("FAIL", "leader", "no replica leads: " + "; ".join(notes))


def probe_pod(namespace: str) -> Json:
    """The dry-run Pod: one claim from a template, as a user would write it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "dra-operator-check", "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "registry.invalid/check:1",
                    "resources": {"claims": [{"name": "gpu"}]},
                }
            ],
            "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": PROBE_TEMPLATE}],
        },
    }


def webhook_answer(namespace: str, created: Json | None, refusal: str | None) -> Finding:
    """The verdict on the dry-run create: `created` is the Pod the API server answered, or `refusal` why
    it did not."""
    where = f"(a server-side dry run in namespace {namespace})"
    if refusal is not None:
        return Finding(
            "FAIL", "webhook", f"the API server refused a Pod that uses a claim {where}: {refusal}"
        )
    gates = [g.get("name") for g in ((created or {}).get("spec") or {}).get("schedulingGates") or []]
    if names.SCHEDULING_GATE not in gates:
        return Finding(
            "FAIL",
            "webhook",
            f"a Pod that uses a claim came back without the gate {names.SCHEDULING_GATE} {where}: the "
            "webhook was not called (no configuration yet: is a replica leading? Or the namespace is "
            "excluded, or not one the operator watches: --namespace, the chart's operator.watchNamespaces)",
        )
    return Finding("ok", "webhook", f"a Pod that uses a claim is gated for allocation {where}")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def devices(slices: list[Json]) -> Finding:
    """The published slices and, from their status (the operator's counts), their devices."""
    if not slices:
        return Finding(
            "warn", "devices", "no ResourceSlice: are the node agents running on the device nodes?"
        )
    nodes = {(s.get("spec") or {}).get("nodeName") for s in slices} - {None}
    counted = [s["status"] for s in slices if "devices" in (s.get("status") or {})]
    totals = {
        key: sum(int(status.get(key) or 0) for status in counted) for key in ("allocated", "tainted", "free")
    }
    published = sum(len((s.get("spec") or {}).get("devices") or []) for s in slices)
    detail = (
        f"{_plural(len(slices), 'slice')} on {_plural(len(nodes), 'node')}, {_plural(published, 'device')}: "
        + ", ".join(f"{value} {key}" for key, value in totals.items())
    )
    if len(counted) < len(slices):  # the operator writes the counts every few seconds
        detail += f" (of the {_plural(len(counted), 'slice')} the operator has counted so far)"
    return Finding("ok", "devices", detail)


async def run_checks(kube: Kube, namespace: str, lease: str | None) -> list[Finding]:
    """Read what each verdict needs, in order; an API error is that part's FAIL, not the end."""
    from dra_operator.kube.client import KubeError, ours

    findings = []
    try:
        findings.append(served(await kube.get(f"/apis/{API_VERSION}")))
    except KubeError as error:
        findings.append(Finding("FAIL", "API", f"discovery failed: {error}"))
    generated = {crd["metadata"]["name"]: crd for crd in generate().values()}
    try:
        installed = {name: await kube.get(f"{CRDS}/{name}") for name in generated}
        findings.append(crds_current(installed, generated))
    except KubeError as error:  # reading CRDs is often an administrator's right only
        findings.append(Finding("warn", "CRDs", f"cannot read them: {error}"))

    try:
        if lease:
            lease_ns, _, lease_name = lease.partition("/")
            found = await kube.get(f"{LEASES}/namespaces/{lease_ns}/leases/{lease_name}")
            leases = [found] if found else []
        else:
            listed = await kube.request("GET", f"{LEASES}/leases", query=[("labelSelector", RELEASE_LABEL)])
            leases = list(listed.get("items") or [])
        findings.append(lease_held(leases, datetime.datetime.now(datetime.UTC)))
    except KubeError as error:
        findings.append(Finding("FAIL", "leader", f"cannot read the Lease: {error}"))

    created, refusal = None, None
    try:
        created = await kube.request(
            "POST", f"/api/v1/namespaces/{namespace}/pods", probe_pod(namespace), query=[("dryRun", "All")]
        )
    except KubeError as error:
        refusal = error.message if error.status else str(error)
    findings.append(webhook_answer(namespace, created, refusal))

    try:
        listed = await kube.request("GET", ours("resourceslices"))
        findings.append(devices(list(listed.get("items") or [])))
    except KubeError as error:
        findings.append(Finding("FAIL", "devices", f"cannot list ResourceSlices: {error}"))
    return findings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG / ~/.kube)"
    )
    parser.add_argument(
        "--namespace",
        "-n",
        default="default",
        help="where the dry-run Pod is created (nothing is stored): one the webhook covers (default default)",
    )
    parser.add_argument(
        "--lease",
        metavar="NAMESPACE/NAME",
        help=f"the operator's Lease (default: those labelled {RELEASE_LABEL})",
    )


async def _main(args: argparse.Namespace) -> int:
    from dra_operator.kube.client import Kube, KubeError, NoApiServer, api_client

    try:
        api = await api_client(args.kubeconfig)
    except NoApiServer as error:
        print(error, file=sys.stderr)
        return 1
    try:
        try:
            findings = await run_checks(Kube(api), args.namespace, args.lease)
        except KubeError as error:
            print(f"FAIL  the API server: {error}", file=sys.stderr)
            return 1
    finally:
        await api.close()
    for finding in findings:
        print(finding.line())
    return 1 if any(f.verdict == "FAIL" for f in findings) else 0


def main(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))
