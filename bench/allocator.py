"""Allocator throughput and growth with device count (a benchmark, not a test).

Cluster: nodes with 8 simulated GPUs each (`driver.example.com`, one node-local slice per node); 7 of 8 GPUs
have 64Gi, one 32Gi. Workload: Pods with one claim from the seed's template (one GPU, `type == "gpu"` and
memory 64Gi) allocated one after the other, each committed to the snapshot, until the cluster is full (or
`--claims`).

Columns: devices and nodes; `build ms`: Snapshot.build; `first ms`: the first claim (it evaluates the
selectors on every device once); `claims/s` and `ms/claim` over all claims after the first; `CEL evals`:
selector evaluations in all; `steps`: search steps; `rebuild claims/s`: a caller that rebuilds the snapshot
for every claim from the same objects (the CEL cache is shared, so it evaluates nothing new), over at most
200 claims.

    .venv/bin/python bench/allocator.py [--sizes 1000,4000,16000,64000] [--claims N]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from dra_operator.allocation import Allocation, PodRef, SelectorCache, Snapshot, allocate
from dra_operator.api.resource import DeviceClass, ResourceClaim, ResourceSlice

DRIVER = "driver.example.com"
PER_NODE = 8
SEED_SELECTOR = (
    f'device.attributes["{DRIVER}"].type == "gpu" && device.capacity["{DRIVER}"].memory == quantity("64Gi")'
)


def cluster(devices: int) -> tuple[list[DeviceClass], list[ResourceSlice]]:
    device_class = DeviceClass.model_validate(
        {
            "metadata": {"name": "example-device-class"},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
        }
    )
    slices = []
    for node in range(devices // PER_NODE):
        name = f"node-{node:05}"
        gpus: list[dict[str, Any]] = [
            {
                "name": f"gpu-{i}",
                "attributes": {"type": {"string": "gpu"}, "index": {"int": i}},
                "capacity": {"memory": {"value": "32Gi" if i == PER_NODE - 1 else "64Gi"}},
            }
            for i in range(PER_NODE)
        ]
        slices.append(
            ResourceSlice.model_validate(
                {
                    "metadata": {"name": f"{name}-gpu", "uid": f"uid-{node}", "resourceVersion": "1"},
                    "spec": {
                        "driver": DRIVER,
                        "nodeName": name,
                        "pool": {"name": name, "generation": 1, "resourceSliceCount": 1},
                        "devices": gpus,
                    },
                }
            )
        )
    return [device_class], slices


def claim(index: int) -> ResourceClaim:
    return ResourceClaim.model_validate(
        {
            "metadata": {"name": f"pod-{index}-gpu-claim-x", "namespace": "bench"},
            "spec": {
                "devices": {
                    "requests": [
                        {
                            "name": "gpu-claim",
                            "exactly": {
                                "deviceClassName": "example-device-class",
                                "selectors": [{"cel": {"expression": SEED_SELECTOR}}],
                            },
                        }
                    ]
                }
            },
        }
    )


def measure(devices: int, limit: int | None) -> dict[str, float]:
    classes, slices = cluster(devices)
    cache = SelectorCache()
    started = time.perf_counter()
    snapshot = Snapshot.build(classes, slices, cache=cache)
    build = time.perf_counter() - started
    capacity = (devices // PER_NODE) * (PER_NODE - 1)
    total = min(capacity, limit) if limit else capacity
    claims = [claim(i) for i in range(total)]

    started = time.perf_counter()
    first = allocate(snapshot, PodRef("bench", "pod-0", "u0"), [claims[0]])
    assert isinstance(first, Allocation), first
    first.commit(snapshot)
    first_time = time.perf_counter() - started

    started = time.perf_counter()
    for index in range(1, total):
        outcome = allocate(snapshot, PodRef("bench", f"pod-{index}", f"u{index}"), [claims[index]])
        assert isinstance(outcome, Allocation), outcome
        outcome.commit(snapshot)
    steady = time.perf_counter() - started

    # A stateless caller: rebuild the snapshot from the same objects for each claim (CEL cache shared).
    rebuild_claims = min(200, total)
    fresh = Snapshot.build(classes, slices, cache=cache)
    fresh_claims = [claim(total + i) for i in range(rebuild_claims)]
    done: list[tuple[tuple[str, str], Any]] = []
    started = time.perf_counter()
    for index, item in enumerate(fresh_claims):
        fresh = Snapshot.build(classes, slices, cache=cache)
        for key, result in done:
            fresh.record_allocation(key, result)
        outcome = allocate(fresh, PodRef("bench", f"r{index}", f"r{index}"), [item])
        assert isinstance(outcome, Allocation), outcome
        done.extend(outcome.results.items())
    rebuild = time.perf_counter() - started
    return {
        "devices": devices,
        "nodes": devices // PER_NODE,
        "build_ms": build * 1000,
        "first_ms": first_time * 1000,
        "claims": total,
        "claims_per_s": (total - 1) / steady if total > 1 else 0.0,
        "ms_per_claim": steady * 1000 / (total - 1) if total > 1 else 0.0,
        "cel": cache.evaluations,
        "steps": snapshot.search_steps,
        "rebuild_per_s": rebuild_claims / rebuild if rebuild else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,4000,16000,64000", help="device counts, comma-separated")
    parser.add_argument("--claims", type=int, default=None, help="at most this many claims per size")
    args = parser.parse_args()
    rows = [measure(int(size), args.claims) for size in args.sizes.split(",")]
    header = (
        f"{'devices':>8} {'nodes':>6} {'build ms':>9} {'first ms':>9} {'claims':>7} {'claims/s':>9} "
        f"{'ms/claim':>9} {'CEL evals':>10} {'steps':>8} {'rebuild claims/s':>17}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['devices']:>8} {r['nodes']:>6} {r['build_ms']:>9.1f} {r['first_ms']:>9.1f} {r['claims']:>7} "
            f"{r['claims_per_s']:>9.0f} {r['ms_per_claim']:>9.3f} {r['cel']:>10} {r['steps']:>8} "
            f"{r['rebuild_per_s']:>17.0f}"
        )


if __name__ == "__main__":
    main()
