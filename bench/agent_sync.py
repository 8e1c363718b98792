"""What the node agents' publishing passes cost kube-apiserver when N nodes have published their slices.

Each pass (`SlicePublisher.sync`, every `--interval`, 60 s by default) brings the node's slices to what the
agent read. Side by side on one control plane, alternating:

- the list of the agent's slices read consistently (as before the sixth 2026-12-07 session): on Kubernetes
  1.30 a consistent list of a custom resource is served from etcd (1.31 turned on consistent lists from the
  watch cache), every slice of every node read and decoded to answer with one;
- that list from the watch cache (resourceVersion 0);
- a whole pass with nothing changed that lists from the cache and reads the Node (the seventh session's
  start);
- a whole pass with nothing changed planned against the agent's SliceView (a label-selected watch; now).

Then what the watches cost instead: N SliceViews opened as N agents open them (a list from the cache, then
the watch), kube-apiserver's memory (RSS; Go heap in use after a collection and goroutines, by its metrics)
and CPU at rest with them open against a window before, and its CPU per slice write with N watchers against
none (each write is matched against every watcher's selector). Prints ms and kube-apiserver CPU ms per call
(medians), the ratios, and what N agents together cost at the default interval.

The slices are the agent's own (`slices.plan` of an H100-shaped inventory, 8 GPUs a node), owned by real Node
objects as the agent makes them.

    .venv/bin/python bench/agent_sync.py [--nodes 5000] [--version 1.30] [--version 1.36] [--calls 10]
                                         [--rest 30] [--writes 20]"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config
from prometheus_client.parser import text_string_to_metric_families

from dra_operator.agent.inventory import DeviceInfo, Inventory
from dra_operator.agent.publisher import PLURAL, SlicePublisher
from dra_operator.agent.slices import Create, node_selector, plan, slice_name
from dra_operator.agent.sliceview import SliceView
from dra_operator.api.group import GROUP, VERSION
from dra_operator.controlplane import ControlPlane, node_manifest
from operator_vs_builtin import cpu_seconds, memory_mib

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


async def eventually(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {within} s")
        await asyncio.sleep(0.05)


async def measure(plane: ControlPlane, calls: int) -> dict[str, tuple[float, float]]:
    apiserver = plane.pids["kube-apiserver"]
    async with await config.new_client_from_config(config_file=str(plane.kubeconfig)) as api:
        listing, watching = SlicePublisher(api, "node-0"), SlicePublisher(api, "node-0")
        assert not await listing.sync([inventory(0)]), "node-0's slice should be published already"
        view = watching.watch(lambda: None)
        view_task = asyncio.create_task(view.run())
        await eventually(lambda: view.items() is not None, 30, "node-0's view listed")
        assert not await watching.sync([inventory(0)])  # reads the Node's uid once, as an agent's first pass
        samples: dict[str, list[tuple[float, float]]] = {
            "consistent list": [],
            "cached list": [],
            "pass, listing": [],
            "pass, watching": [],
        }
        for _ in range(calls):  # alternating, so all meet the same machine
            samples["consistent list"].append(await timed(apiserver, lambda: listing.existing(cached=False)))
            samples["cached list"].append(await timed(apiserver, lambda: listing.existing(cached=True)))
            samples["pass, listing"].append(await timed(apiserver, lambda: listing.sync([inventory(0)])))
            samples["pass, watching"].append(await timed(apiserver, lambda: watching.sync([inventory(0)])))
        assert listing.writes.total() == watching.writes.total() == 0, "an unchanged inventory wrote"
        assert view.lists == 1, f"the view listed {view.lists} times"
        view_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await view_task
    return {
        what: (statistics.median(w for w, _ in got), statistics.median(c for _, c in got))
        for what, got in samples.items()
    }


GO_METRICS = ("go_memstats_heap_inuse_bytes", "go_goroutines", "apiserver_longrunning_requests")


def go_metrics(plane: ControlPlane, collect: bool = False) -> dict[str, float]:
    """Kube-apiserver's Go heap in use, goroutines, and its open watches of our slices, by its /metrics;
    after a garbage collection if `collect` (its heap profile with gc=1 runs one), so the heap is what is
    live, not what the last collection left to grow."""
    if collect:
        plane.kubectl("get", "--raw", "/debug/pprof/heap?gc=1&debug=1", timeout=120)
    got = dict.fromkeys(GO_METRICS, 0.0)
    page = plane.kubectl("get", "--raw", "/metrics").stdout
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name not in got:
                continue
            if sample.name == "apiserver_longrunning_requests" and (
                sample.labels.get("resource"),
                sample.labels.get("verb"),
            ) != (PLURAL, "WATCH"):
                continue
            got[sample.name] += sample.value
    return got


async def watches(plane: ControlPlane, nodes: int, rest: float, writes: int) -> dict[str, float]:
    """Kube-apiserver with `nodes` agents' SliceViews open against none: RSS, CPU at rest, CPU per write."""
    apiserver = plane.pids["kube-apiserver"]
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(plane.kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = nodes + 16  # a watch holds its connection, as each agent's does
    async with client.ApiClient(configuration) as api:
        custom = client.CustomObjectsApi(api)
        name = slice_name("node-0", inventory(0).driver)

        async def write_cpu() -> float:
            """Median kube-apiserver CPU ms of `writes` replaces of node-0's slice (a label flipped)."""
            spent = []
            for index in range(writes):
                current = await custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
                current["metadata"].setdefault("labels", {})["bench.dra-operator.io/write"] = str(index)

                async def replace(body: dict[str, Any] = current) -> None:
                    await custom.replace_cluster_custom_object(GROUP, VERSION, PLURAL, name, body)

                spent.append((await timed(apiserver, replace))[1])
            return statistics.median(spent)

        got = {"write cpu ms, no watchers": await write_cpu()}
        before = go_metrics(plane, collect=True)
        rss, cpu = memory_mib(apiserver), cpu_seconds(apiserver)
        await asyncio.sleep(rest)
        got["rest cores, no watchers"] = (cpu_seconds(apiserver) - cpu) / rest
        views = [SliceView(custom, node_selector(f"node-{i}"), lambda: None) for i in range(nodes)]
        started = time.monotonic()
        tasks = [asyncio.create_task(view.run()) for view in views]
        await eventually(lambda: all(v.items() is not None for v in views), 600, "every view listed")
        await eventually(lambda: sum(v.watches for v in views) >= nodes, 120, "every watch requested")

        async def open_watches() -> float:
            return (await asyncio.to_thread(go_metrics, plane))["apiserver_longrunning_requests"]

        deadline = time.monotonic() + 600
        while await open_watches() < nodes:  # a request made is not yet a watch open at the server
            if time.monotonic() > deadline:
                raise TimeoutError(f"{nodes} watches not open within 600 s")
            await asyncio.sleep(1)
        got["open s"] = time.monotonic() - started
        got["rss mib, no watchers"], got["rss mib, watching"] = rss, memory_mib(apiserver)
        for metric, value in before.items():
            got[f"{metric}, no watchers"] = value
        for metric, value in go_metrics(plane, collect=True).items():
            got[f"{metric}, watching"] = value
        cpu = cpu_seconds(apiserver)
        await asyncio.sleep(rest)
        got["rest cores, watching"] = (cpu_seconds(apiserver) - cpu) / rest
        got["write cpu ms, watching"] = await write_cpu()
        assert all(v.lists == 1 for v in views), "a view listed again: its watch failed"
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return got


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
    parser.add_argument(
        "--rest", type=float, default=30.0, help="seconds of each at-rest window (default 30)"
    )
    parser.add_argument("--writes", type=int, default=20, help="slice writes timed each way (default 20)")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for version in args.version or ["1.30", "1.36"]:
        # Profiling on: the heap's figure is read after a collection its heap profile runs (go_metrics).
        with ControlPlane(version=version, extra_apiserver_args=["--profiling=true"]) as plane:
            plane.kubectl("apply", "--server-side", "-f", str(SLICE_CRD))
            plane.kubectl(
                "wait", "--for=condition=Established", f"crd/resourceslices.{GROUP}", "--timeout=60s"
            )
            started = time.monotonic()
            populate(plane, args.nodes)
            took = time.monotonic() - started
            print(f"Kubernetes {plane.version}: {args.nodes} Nodes and slices in {took:.1f} s")
            got = asyncio.run(measure(plane, args.calls))
            held = asyncio.run(watches(plane, args.nodes, args.rest, args.writes))
        for what, (wall, cpu) in got.items():
            print(f"  {what:16s} {wall:9.2f} ms, kube-apiserver {cpu:9.2f} CPU ms (median of {args.calls})")
        consistent, cached = got["consistent list"], got["cached list"]
        wall_ratio, cpu_ratio = cached[0] / consistent[0], cached[1] / max(consistent[1], 0.01)
        print(f"  cached / consistent list: wall {wall_ratio:.4f}x, CPU {cpu_ratio:.4f}x")
        labels = {
            "consistent list": "a pass before the sixth session (its consistent list)",
            "pass, listing": "a pass listing from the cache",
            "pass, watching": "a pass planned against the view",
        }
        for what, label in labels.items():
            cores = got[what][1] / 1000 * args.nodes / INTERVAL
            print(f"  {args.nodes} agents at --interval {INTERVAL:.0f}, {label}: {cores:.3f} apiserver cores")

        def grew(metric: str, held: dict[str, float] = held) -> tuple[float, float, float]:
            then, now = held[f"{metric}, no watchers"], held[f"{metric}, watching"]
            return then, now, (now - then) / args.nodes

        print(f"  {args.nodes} views opened in {held['open s']:.1f} s")
        open_watches = held["apiserver_longrunning_requests, watching"]
        print(f"  kube-apiserver's open WATCH requests of resourceslices: {open_watches:.0f}")
        then, now, each = grew("rss mib")
        print(f"  kube-apiserver RSS {then:.0f} -> {now:.0f} MiB ({1024 * each:.1f} KiB a watch)")
        then, now, each = grew("go_memstats_heap_inuse_bytes")
        print(f"  Go heap in use {then / 2**20:.0f} -> {now / 2**20:.0f} MiB ({each / 1024:.1f} KiB a watch)")
        then, now, each = grew("go_goroutines")
        print(f"  goroutines {then:.0f} -> {now:.0f} ({each:.1f} a watch)")
        print(
            f"  at rest ({args.rest:.0f} s windows): {held['rest cores, no watchers']:.3f} cores without the "
            f"watches, {held['rest cores, watching']:.3f} with them"
        )
        print(
            f"  a slice write: {held['write cpu ms, no watchers']:.2f} CPU ms with no watcher, "
            f"{held['write cpu ms, watching']:.2f} with {args.nodes} (median of {args.writes})"
        )
        results[plane.version] = {"calls": got, "watches": held}
    print(json.dumps({"nodes": args.nodes, "results": results}))


if __name__ == "__main__":
    main()
