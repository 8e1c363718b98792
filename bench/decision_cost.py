"""The operator's cost of one allocation decision as the cluster grows, without an API server.

What a Pod's turn costs the leader between reading its claims and writing them: gathering the request from the
caches (`Reconciler._request`) and the allocator's call (snapshot upkeep and search), for one Pod with one
template claim and the seed selector, at N nodes x 8 GPUs with C claims already allocated. Issue 14 asks for
per-item cost flat from 200 to 2,000 Pods: the ratio column compares each row with the first.

`--requests N` gives each claim N requests, each with a request selector of its own (N signatures): the
binpack ranking then sums the signatures' free devices per node.

Then, at the largest size, the first decision after one node's slice changed (its agent republished it, a
new generation), side by side: the kept snapshot swaps that node's slices in place (the default,
`Allocator.replace_slices`) or is rebuilt, which also makes the search count every node's candidates again.
Alternating, `--slice-changes` times each; the medians and their ratio are printed.

    .venv/bin/python bench/decision_cost.py [--nodes 500] [--claims 200,2000] [--decisions 200] [--profile]
        [--slice-changes 10] [--requests 1]
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import pstats
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from dra_operator.controlplane import gpu_slice_manifest
from dra_operator.operator.allocating import Allocator, Placed
from dra_operator.operator.reconciler import Reconciler
from dra_operator.operator.state import CLAIMS, CLASSES, INDEXES, NODES, PODS, SLICES, State, key_of

SEED = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "seed"
Json = dict[str, Any]


def seed(name: str) -> Json:
    obj: Json = yaml.safe_load((SEED / name).read_text())
    return obj


class Cluster:
    def __init__(self, nodes: int, claims: int, requests: int = 1) -> None:
        self.indexes: dict[str, dict[tuple[str, str], list[Json]]] = {name: {} for name in INDEXES}
        self.state = State()
        self.allocator = Allocator()
        device_class = seed("deviceclass.yaml") | {}
        device_class["metadata"] |= {"uid": "class", "resourceVersion": "1"}
        self.put(CLASSES, device_class)
        self.template = seed("resourceclaimtemplate.yaml")
        listed = self.template["spec"]["spec"]["devices"]["requests"]
        for index in range(1, requests):
            extra = copy.deepcopy(listed[0])
            extra["name"] = f"more-{index}"
            extra["exactly"]["selectors"].append({"cel": {"expression": f'device.driver != "other-{index}"'}})
            listed.append(extra)
        for index in range(nodes):
            name = f"node-{index:05d}"
            self.put(NODES, {"metadata": {"name": name, "labels": {}}, "spec": {}})
            gpus = {f"gpu-{g}": "64Gi" for g in range(8)}
            slice_ = gpu_slice_manifest(name, gpus)
            slice_["metadata"] |= {"uid": f"slice-{name}", "resourceVersion": "1"}
            self.put(SLICES, slice_)
        self.state.bind(self.indexes)
        self.reconciler = Reconciler(None, self.state, None, self.allocator)  # type: ignore[arg-type]
        self.serial = 0
        for _ in range(claims):  # allocated through the same path, then kept as if written
            self.decide(write=True)

    def put(self, kind: str, obj: Json) -> None:
        self.indexes[kind][key_of(obj)] = [obj]

    def decide(self, write: bool) -> float:
        self.serial += 1
        uid = f"pod-{self.serial}"
        pod = {
            "metadata": {"name": uid, "namespace": "bench", "uid": uid, "resourceVersion": "1"},
            "spec": {},
        }
        claim = {
            "apiVersion": "resource.dra-operator.io/v1",
            "kind": "ResourceClaim",
            "metadata": {
                "name": f"{uid}-gpu",
                "namespace": "bench",
                "uid": f"c-{uid}",
                "resourceVersion": "1",
            },
            "spec": copy.deepcopy(self.template["spec"]["spec"]),
        }
        started = time.perf_counter()
        request = self.reconciler._request(pod, {"gpu": claim})
        assert request is not None
        outcome = self.allocator.allocate(request)
        elapsed = time.perf_counter() - started
        assert isinstance(outcome, Placed), outcome
        if write:
            claim["status"] = {
                "allocation": outcome.allocations["gpu"],
                "reservedFor": [{"resource": "pods", "name": uid, "uid": uid}],
            }
            claim["metadata"]["resourceVersion"] = "2"
            self.put(CLAIMS, claim)
            self.put(PODS, pod)
            self.state.note(CLAIMS, claim)  # what the index functions do
            self.state.note(PODS, pod)
            self.state.touch(CLAIMS, key_of(claim))  # what the claims watch handler does
        return elapsed

    def republish(self, index: int) -> None:
        """Node `index`'s slice at its next generation (as the API server moves it on a spec change)."""
        key = list(self.indexes[SLICES])[index]
        obj = copy.deepcopy(self.indexes[SLICES][key][0])
        meta = obj["metadata"]
        meta["generation"] = int(meta.get("generation") or 1) + 1
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        obj["spec"]["pool"]["generation"] += 1
        self.put(SLICES, obj)
        self.state.note(SLICES, obj)
        self.state.touch(SLICES, key_of(obj))


def after_slice_change(cluster: Cluster, changes: int) -> dict[bool, list[float]]:
    """ms of the first decision after a slice change, swapped in place (True) or rebuilt (False)."""
    times: dict[bool, list[float]] = {True: [], False: []}
    nodes = len(cluster.indexes[SLICES])
    for change in range(2 * changes):
        swap = change % 2 == 0
        cluster.allocator.replace_slices = swap
        cluster.republish((change * 7919) % nodes)
        times[swap].append(cluster.decide(write=True) * 1000)
    cluster.allocator.replace_slices = True
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--claims", default="200,2000")
    parser.add_argument("--decisions", type=int, default=200)
    parser.add_argument("--profile", action="store_true", help="cProfile the decisions of the largest size")
    parser.add_argument("--slice-changes", type=int, default=10, help="slice changes timed each way")
    parser.add_argument("--requests", type=int, default=1, help="requests per claim, each its own signature")
    args = parser.parse_args()
    sizes = [int(s) for s in args.claims.split(",")]
    print(
        f"{args.nodes} nodes x 8 GPUs; {args.decisions} decisions per row, each then written; "
        f"{args.requests} request(s) per claim"
    )
    print(f"{'claims allocated':>17} {'ms/decision':>12} {'ratio':>7}")
    first = None
    for size in sizes:
        cluster = Cluster(args.nodes, size, args.requests)
        profiler = cProfile.Profile() if args.profile and size == sizes[-1] else None
        if profiler:
            profiler.enable()
        total = sum(cluster.decide(write=True) for _ in range(args.decisions))
        if profiler:
            profiler.disable()
        per = total / args.decisions * 1000
        first = first or per
        print(f"{size:>17} {per:>12.2f} {per / first:>6.2f}x")
        if profiler:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(18)
    if args.slice_changes:
        times = after_slice_change(cluster, args.slice_changes)
        swapped, rebuilt = statistics.median(times[True]), statistics.median(times[False])
        print(
            f"first decision after one node's slice changed, median of {args.slice_changes} each, "
            f"at {sizes[-1]} claims: swapped in place {swapped:.1f} ms, rebuilt {rebuilt:.1f} ms "
            f"({swapped / rebuilt:.2f}x)"
        )


if __name__ == "__main__":
    main()
