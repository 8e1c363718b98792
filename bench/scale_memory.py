"""dra-operator's memory and failover at cluster scale (a benchmark, not a test).

One embedded control plane (Kubernetes 1.36, or `--version`), N fake Nodes (no kubelet) with one ResourceSlice
of 8 GPUs each, C ResourceClaims of users that no Pod uses yet (`pending` by the CRD's status default: no
write), a DeviceClass and a ResourceClaimTemplate. Then:

1. replica A starts with leader election: time until its caches are full and it leads; RSS (the sum over the
   operator and its admission process) and the pages they map counted once (`pages_once_mib`);
2. replica B starts beside it as the standby: time until its caches are full;
3. a burst of P Pods with one template claim each, from 8 clients, all placed by A; A's RSS peak (VmHWM) and
   after, B's too (it caches the same objects and decides nothing);
4. failover: A is SIGKILLed; from B taking the Lease (its log's `became leader`) to B ungating a Pod created
   the moment B had re-pointed the webhook at itself: the first decision of a new leader with full caches
   (issue 14 asks for 5 s at 5,000 nodes x 8 devices).

    .venv/bin/python bench/scale_memory.py [--nodes 5000] [--claims 10000] [--pods 1000] [--version 1.30]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dra_operator.controlplane import ControlPlane, build, in_claim_form, node_manifest, wait_until
from dra_operator.operator.local import LocalOperator
from operator_vs_builtin import (
    OURS,
    PER_NODE,
    BindingWatch,
    Client,
    claim_template,
    device_class,
    memory_mib,
    pages_once_mib,
    pod,
    resource_slice,
    stage,
)

Json = dict[str, Any]


def user_claim(name: str) -> Json:
    spec = claim_template(OURS)["spec"]["spec"]
    return {"apiVersion": OURS.api_version, "kind": "ResourceClaim", "metadata": {"name": name}, "spec": spec}


def in_parallel(fn: Callable[[int], object], count: int, clients: int = 8) -> None:
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(fn, range(count)))


def log_time(operator: LocalOperator, event: str, **fields: str) -> float | None:
    """The epoch seconds of the first line of `operator`'s JSON log whose event starts with `event` (and
    has these fields)."""
    for line in operator.log_file.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if str(record.get("event")).startswith(event) and all(record.get(k) == v for k, v in fields.items()):
            stamp = str(record["timestamp"]).replace("Z", "+00:00")
            return datetime.datetime.fromisoformat(stamp).timestamp()
    return None


def once(pid: int) -> str:
    """`pages_once_mib` as a figure: the memory of the operator's processes as its container is charged it,
    where the RSS figures count twice what both processes map."""
    found = pages_once_mib(pid)
    return "unknown (frame numbers hidden: run as root)" if found is None else f"{found:.0f} MiB"


def allocated_in_status(cp: ControlPlane, group: str) -> int:
    """The devices allocated, as the slices' status counts them (the operator's free-devices view)."""
    slices = cp.request("GET", f"{group}/resourceslices")["items"]
    return sum(int((s.get("status") or {}).get("allocated") or 0) for s in slices)


def caches_full(operator: LocalOperator) -> bool:
    operator.check()
    return operator.metrics().get("dra_operator_ready") == 1.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=5000, help="fake Nodes, 8 GPUs each (default 5000)")
    parser.add_argument("--claims", type=int, default=10000, help="users' claims no Pod uses (default 10000)")
    parser.add_argument("--pods", type=int, default=1000, help="Pods of the burst (default 1000)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for each stage")
    parser.add_argument(
        "--version",
        default=build.K8S_VERSION,
        help=f"the Kubernetes release to run (default {build.K8S_VERSION})",
    )
    args = parser.parse_args()
    ns = OURS.namespace
    group = OURS.group_path
    figures: list[tuple[str, str]] = []

    with ControlPlane(version=args.version) as cp, tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        client = Client(cp)
        print(f"Kubernetes {cp.version}", flush=True)

        with stage(f"{args.nodes} Nodes and slices ({args.nodes * PER_NODE} devices), {args.claims} claims"):
            cp.kubectl("apply", "-f", str(Path(__file__).resolve().parent.parent / "crds"))
            cp.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
            cp.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
            wait_until(
                lambda: cp.request("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default"),
                timeout=60,
                message="the namespace's default ServiceAccount",
            )
            nodes = [f"node-{i:05}" for i in range(args.nodes)]
            in_parallel(lambda i: cp.request("POST", "/api/v1/nodes", node_manifest(nodes[i])), args.nodes)
            in_parallel(
                lambda i: cp.request("POST", f"{group}/resourceslices", resource_slice(OURS, nodes[i])),
                args.nodes,
            )
            cp.request("POST", f"{group}/deviceclasses", device_class(OURS))
            cp.request("POST", f"{group}/namespaces/{ns}/resourceclaimtemplates", claim_template(OURS))
            in_parallel(
                lambda i: cp.request(
                    "POST", f"{group}/namespaces/{ns}/resourceclaims", user_claim(f"c{i:05}")
                ),
                args.claims,
            )

        a = LocalOperator(
            cp.kubeconfig, extra_args=["--lease-namespace=default"], log_file=Path(tmp) / "a.log"
        )
        b = LocalOperator(
            cp.kubeconfig, extra_args=["--lease-namespace=default"], log_file=Path(tmp) / "b.log"
        )
        try:
            started = time.monotonic()
            a.start()
            with stage("replica A: caches full, leading, webhook configured"):
                a.wait_ready(timeout=args.timeout)
            figures.append(
                ("A ready (caches full, leading) after start", f"{time.monotonic() - started:.1f} s")
            )
            figures.append(("A RSS with caches full", f"{memory_mib(a.pid):.0f} MiB"))
            figures.append(("A with caches full, each page once", once(a.pid)))

            started = time.monotonic()
            b.start()
            with stage("replica B (standby): caches full"):
                wait_until(lambda: caches_full(b), timeout=args.timeout, message="B's caches full")
            figures.append(("B caches full after start", f"{time.monotonic() - started:.1f} s"))

            watch = BindingWatch(client, ns)
            try:
                with stage(f"burst: {args.pods} Pods from 8 clients, placed by A"):
                    started = time.monotonic()
                    in_parallel(
                        lambda i: cp.request(
                            "POST",
                            f"/api/v1/namespaces/{ns}/pods",
                            in_claim_form(pod(f"p{i:05}"), cp.release.minor),
                        ),
                        args.pods,
                    )
                    wait_until(
                        lambda: len(watch.bound) >= args.pods,
                        timeout=args.timeout,
                        message=f"{args.pods} Pods bound",
                    )
                    burst = time.monotonic() - started
                figures.append(("burst: Pods/s", f"{args.pods / burst:.1f}"))
                # The burst's last work: the leader writes the allocations into the slices' status (the
                # free-devices view, every 5 s), one write per slice after the last Pod is bound; the peak
                # figures below include it.
                with stage("A settles: the slices' status counts the burst's devices"):
                    wait_until(
                        lambda: allocated_in_status(cp, group) >= args.pods,
                        timeout=args.timeout,
                        message="the slices' status counting every allocated device",
                    )
                figures.append(
                    (
                        "A RSS after the burst / peak (VmHWM)",
                        f"{memory_mib(a.pid):.0f} / {memory_mib(a.pid, 'VmHWM'):.0f} MiB",
                    )
                )
                figures.append(("A after the burst, each page once", once(a.pid)))
                figures.append(
                    (
                        "B RSS / peak (standby, same caches)",
                        f"{memory_mib(b.pid):.0f} / {memory_mib(b.pid, 'VmHWM'):.0f} MiB",
                    )
                )

                with stage("failover: A killed, B leads and decides"):
                    a.kill()
                    wait_until(
                        lambda: b.ready(),
                        timeout=args.timeout,
                        message="B leading with its webhook configured",
                    )
                    cp.request(
                        "POST",
                        f"/api/v1/namespaces/{ns}/pods",
                        in_claim_form(pod("after-failover"), cp.release.minor),
                    )
                    wait_until(
                        lambda: "after-failover" in watch.bound, timeout=args.timeout, message="the Pod bound"
                    )
                took_lease = log_time(b, "became leader")
                ungated = log_time(b, "pod ungated", pod=f"{ns}/after-failover")
                if took_lease is None or ungated is None:
                    raise RuntimeError(f"B's log lacks the lease or the ungating:\n{b.log()}")
                figures.append(
                    ("failover: B's Lease taken -> first Pod ungated", f"{ungated - took_lease:.2f} s")
                )
                figures.append(
                    (
                        "B RSS / peak after leading",
                        f"{memory_mib(b.pid):.0f} / {memory_mib(b.pid, 'VmHWM'):.0f} MiB",
                    )
                )
            finally:
                watch.close()
        except BaseException:
            print(f"--- A's log ---\n{a.log()}\n--- B's log ---\n{b.log()}", file=sys.stderr)
            raise
        finally:
            b.stop()
            a.stop()

    print()
    print(
        f"{args.nodes} Nodes x {PER_NODE} GPUs ({args.nodes * PER_NODE} devices, one slice per Node), "
        f"{args.claims} users' claims (pending, no Pod), then a burst of {args.pods} Pods with a template "
        "claim"
    )
    width = max(len(name) for name, _ in figures)
    for name, value in figures:
        print(f"  {name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
