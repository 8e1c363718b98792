"""What one node agent's publishing pass costs kube-apiserver when N nodes have published their slices.

Each pass (`SlicePublisher.sync`, every `--interval`, 60 s by default) reads the node and lists the agent's
slices for it by label. Read consistently, a list of a custom resource is served from etcd on Kubernetes 1.30
(1.31 turned on consistent lists from the watch cache): every slice of every node read and decoded to answer
with one. Side by side on one control plane, alternating: that list read consistently (as before the sixth
2026-12-07 session) and from the watch cache (resourceVersion 0, a pass's first read now), then whole passes
with nothing changed. Prints ms and kube-apiserver CPU ms per call (medians), the ratio, and what N agents
together cost kube-apiserver at the default interval.

The slices are the agent's own (`slices.plan` of an H100-shaped inventory, 8 GPUs a node), owned by real Node
objects as the agent makes them.

    .venv/bin/python bench/agent_sync.py [--nodes 5000] [--version 1.30] [--version 1.36] [--calls 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes_asyncio import config

from dra_operator.agent.inventory import DeviceInfo, Inventory
from dra_operator.agent.publisher import SlicePublisher
from dra_operator.agent.slices import Create, plan
from dra_operator.api.group import GROUP, VERSION
from dra_operator.controlplane import ControlPlane, node_manifest
from operator_vs_builtin import cpu_seconds

REPO = Path(__file__).resolve().parents[1]
SLICE_CRD = REPO / "crds" / "resource.dra-operator.io_resourceslices.yaml"
GPUS = 8
INTERVAL = 60.0  # the agent's default --interval


def inventory(node_index: int) -> Inventory:
    """An H100 node's eight GPUs with the attributes the NVML backend reads."""
    return Inventory(
        driver="gpu.dra-operator.io",
        devices=tuple(
            DeviceInfo(
                name=f"gpu-{i}",
                attributes={
                    "type": "gpu",
                    "uuid": f"GPU-{node_index:08x}-{i:04x}-4a1b-9c2d-{node_index * GPUS + i:012x}",
                    "productName": "NVIDIA H100 80GB HBM3",
                    "brand": "Nvidia",
                    "architecture": "Hopper",
                    "driverVersion": "550.54.15",
                    "pcieBusID": f"0000:{i + 0x18:02x}:00.0",
                    "index": i,
                },
                capacity={"memory": "80Gi"},
            )
            for i in range(GPUS)
        ),
    )


def populate(plane: ControlPlane, nodes: int) -> None:
    """N Nodes and each one's slice as its agent would publish it."""

    def one(index: int) -> None:
        name = f"node-{index}"
        node = plane.request("POST", "/api/v1/nodes", node_manifest(name))
        (create,) = plan(name, node["metadata"]["uid"], [inventory(index)], [])
        assert isinstance(create, Create)
        plane.request("POST", f"/apis/{GROUP}/{VERSION}/resourceslices", create.body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(nodes)))


async def timed(apiserver: int, call: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """(wall ms, kube-apiserver CPU ms) of one call."""
    cpu, start = cpu_seconds(apiserver), time.perf_counter()
    await call()
    return 1000 * (time.perf_counter() - start), 1000 * (cpu_seconds(apiserver) - cpu)


async def measure(plane: ControlPlane, calls: int) -> dict[str, tuple[float, float]]:
    apiserver = plane.pids["kube-apiserver"]
    async with await config.new_client_from_config(config_file=str(plane.kubeconfig)) as api:
        publisher = SlicePublisher(api, "node-0")
        assert not await publisher.sync([inventory(0)]), "node-0's slice should be published already"
        samples: dict[str, list[tuple[float, float]]] = {"consistent list": [], "cached list": [], "pass": []}
        for _ in range(calls):  # alternating, so both meet the same machine
            samples["consistent list"].append(
                await timed(apiserver, lambda: publisher.existing(cached=False))
            )
            samples["cached list"].append(await timed(apiserver, lambda: publisher.existing(cached=True)))
            samples["pass"].append(await timed(apiserver, lambda: publisher.sync([inventory(0)])))
        assert publisher.writes.total() == 0, f"an unchanged inventory wrote: {dict(publisher.writes)}"
    return {
        what: (statistics.median(w for w, _ in got), statistics.median(c for _, c in got))
        for what, got in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--nodes", type=int, default=5000, help="nodes, one slice of 8 GPUs each (default 5000)"
    )
    parser.add_argument(
        "--version", action="append", help="Kubernetes release(s) to run (default 1.30, 1.36)"
    )
    parser.add_argument("--calls", type=int, default=10, help="calls of each kind (default 10)")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for version in args.version or ["1.30", "1.36"]:
        with ControlPlane(version=version) as plane:
            plane.kubectl("apply", "--server-side", "-f", str(SLICE_CRD))
            plane.kubectl(
                "wait", "--for=condition=Established", f"crd/resourceslices.{GROUP}", "--timeout=60s"
            )
            started = time.monotonic()
            populate(plane, args.nodes)
            took = time.monotonic() - started
            print(f"Kubernetes {plane.version}: {args.nodes} Nodes and slices in {took:.1f} s")
            got = asyncio.run(measure(plane, args.calls))
        for what, (wall, cpu) in got.items():
            print(f"  {what:16s} {wall:9.2f} ms, kube-apiserver {cpu:9.2f} CPU ms (median of {args.calls})")
        consistent, cached = got["consistent list"], got["cached list"]
        wall_ratio, cpu_ratio = cached[0] / consistent[0], cached[1] / max(consistent[1], 0.01)
        print(f"  cached / consistent: wall {wall_ratio:.4f}x, CPU {cpu_ratio:.4f}x")
        for what in ("consistent list", "pass"):
            cores = got[what][1] / 1000 * args.nodes / INTERVAL
            label = "a pass before (its consistent list)" if what == "consistent list" else "a pass now"
            print(f"  {args.nodes} agents at --interval {INTERVAL:.0f}, {label}: {cores:.2f} apiserver cores")
        results[plane.version] = got
    print(json.dumps({"nodes": args.nodes, "results": results}))


if __name__ == "__main__":
    main()
