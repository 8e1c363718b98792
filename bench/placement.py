"""Placement policies side by side (a benchmark, not a test): fragmentation under mixed 1- and 8-GPU Pods.

The allocator core alone (no API server): N nodes x 8 GPUs, one snapshot per policy, the same seeded stream
of events for each: a Pod of 1 GPU (80 %) or 8 GPUs (20 %) arrives, or a random running Pod ends, keeping the
cluster near `--load` of its GPUs in use. Columns per policy: `8-GPU placed` and `8-GPU refused` (refused
while at least 8 GPUs were free somewhere: fragmentation, not lack of capacity), `1-GPU refused`, `whole
nodes free` (nodes with all 8 GPUs free, averaged over the run), `ms/Pod` (allocation time).

    .venv/bin/python bench/placement.py [--nodes 64] [--events 4000] [--load 0.85] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import dataclass, field

from dra_operator.allocation import Allocation, PodRef, Snapshot, allocate
from dra_operator.allocation.search import PLACEMENTS, Placement
from dra_operator.api.resource import DeviceClass, ResourceClaim, ResourceSlice

DRIVER = "driver.example.com"
PER_NODE = 8


def device_class() -> DeviceClass:
    return DeviceClass.model_validate(
        {
            "metadata": {"name": "gpu"},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
        }
    )


def node_slice(node: str) -> ResourceSlice:
    devices = [{"name": f"gpu-{i}", "attributes": {"type": {"string": "gpu"}}} for i in range(PER_NODE)]
    pool = {"name": node, "generation": 0, "resourceSliceCount": 1}
    spec = {"driver": DRIVER, "nodeName": node, "pool": pool, "devices": devices}
    return ResourceSlice.model_validate({"metadata": {"name": node}, "spec": spec})


def claim(name: str, count: int) -> ResourceClaim:
    request = {"name": "r", "exactly": {"deviceClassName": "gpu", "count": count}}
    return ResourceClaim.model_validate(
        {"metadata": {"name": name, "namespace": "bench"}, "spec": {"devices": {"requests": [request]}}}
    )


@dataclass
class Figures:
    placed_big: int = 0
    refused_big: int = 0
    refused_small: int = 0
    whole_free: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def run(placement: Placement, nodes: int, events: int, load: float, seed: int) -> Figures:
    names = [f"node-{i:04d}" for i in range(nodes)]
    snapshot = Snapshot.build([device_class()], [node_slice(n) for n in names])
    rng = random.Random(seed)
    running: list[tuple[str, str, int]] = []  # (claim name, node, count)
    used = {n: 0 for n in names}
    figures = Figures()
    capacity = nodes * PER_NODE
    for index in range(events):
        in_use = sum(used.values())
        if running and (in_use >= load * capacity or rng.random() < 0.35):
            name, node, count = running.pop(rng.randrange(len(running)))
            snapshot.release(("bench", name))
            used[node] -= count
        else:
            count = 8 if rng.random() < 0.2 else 1
            name = f"c{index}"
            started = time.perf_counter()
            outcome = allocate(snapshot, PodRef("bench", name), [claim(name, count)], placement=placement)
            figures.seconds.append(time.perf_counter() - started)
            if isinstance(outcome, Allocation):
                outcome.commit(snapshot)
                running.append((name, str(outcome.node_name), count))
                used[str(outcome.node_name)] += count
                figures.placed_big += count == 8
            elif count == 8 and capacity - in_use >= 8:
                figures.refused_big += 1
            elif count == 1:
                figures.refused_small += 1
        figures.whole_free.append(sum(1 for n in names if used[n] == 0))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--load", type=float, default=0.85)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(
        f"{args.nodes} nodes x {PER_NODE} GPUs, {args.events} events, load {args.load:.0%}, seed {args.seed}"
    )
    columns = ("8-GPU placed", "8-GPU refused", "1-GPU refused", "whole nodes free", "ms/Pod")
    header = f"{'policy':<8} " + " ".join(f"{c:>{len(c) + 1}}" for c in columns)
    print(header)
    print("-" * len(header))
    rows = {}
    for placement in PLACEMENTS:
        f = run(placement, args.nodes, args.events, args.load, args.seed)
        rows[placement] = f
        print(
            f"{placement:<8} {f.placed_big:>13} {f.refused_big:>14} {f.refused_small:>14} "
            f"{statistics.mean(f.whole_free):>17.1f} {1000 * statistics.mean(f.seconds):>7.2f}"
        )
    refused = {name: f.refused_big for name, f in rows.items()}
    if refused["first"]:
        ratios = ", ".join(f"{name} {count / refused['first']:.2f}x" for name, count in refused.items())
        print(f"8-GPU refusals vs first-fit: {ratios}")
    else:
        print(f"8-GPU refusals: {refused} (first-fit refused none)")


if __name__ == "__main__":
    main()
