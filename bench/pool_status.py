"""What one pass of the free-devices view (operator/poolstatus.py) costs the leader's loop, no API server.

At N nodes x 8 GPUs (one slice each) with C claims allocated, side by side in one run: counting from scratch
(`slice_usage`, every device's model read each pass, as before 2f29dd6) against the pass as it runs now (the
slices' devices kept while the slices are unchanged, so a pass during a burst of allocations only gathers the
claims' devices and counts). Prints ms per pass (median of the repeats) and the ratio.

    .venv/bin/python bench/pool_status.py [--nodes 5000] [--claims 10000] [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from dra_operator.allocation.usage import allocated_devices, count_usage, slice_devices, slice_usage
from dra_operator.api.loader import load_object
from dra_operator.api.resource import ResourceSlice
from dra_operator.controlplane import gpu_slice_manifest

GPUS = 8


def slices(nodes: int) -> list[ResourceSlice]:
    memory = {f"gpu-{i}": "80Gi" for i in range(GPUS)}
    parsed = [load_object(gpu_slice_manifest(f"node-{n}", memory)) for n in range(nodes)]
    return [s for s in parsed if isinstance(s, ResourceSlice)]


def claims(models: list[ResourceSlice], count: int) -> list[dict[str, object]]:
    devices = [(s.spec.driver, s.spec.pool.name, d.name) for s in models for d in s.spec.devices or ()]
    if count > len(devices):
        raise SystemExit(f"{count} claims need more than {len(devices)} devices")
    results = [{"request": "gpu", "driver": k[0], "pool": k[1], "device": k[2]} for k in devices[:count]]
    return [{"status": {"allocation": {"devices": {"results": [r]}}}} for r in results]


def median_ms(run: Callable[[], object], repeats: int, prepare: Callable[[], object] | None = None) -> float:
    """The median of `repeats` timings of `run`, in ms; `prepare` runs before each, untimed."""
    times = []
    for _ in range(repeats):
        if prepare is not None:
            prepare()
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=5000, help="fake nodes, one slice of 8 GPUs each")
    parser.add_argument("--claims", type=int, default=10000, help="claims allocated, one device each")
    parser.add_argument("--repeats", type=int, default=9, help="passes timed per variant (median shown)")
    args = parser.parse_args()
    models = slices(args.nodes)
    allocated = claims(models, args.claims)
    offered = slice_devices(models)
    assert count_usage(offered, allocated_devices(allocated), set()) == slice_usage(models, allocated)
    before = median_ms(lambda: slice_usage(models, allocated), args.repeats)
    now = median_ms(lambda: count_usage(offered, allocated_devices(allocated), set()), args.repeats)
    reading = median_ms(lambda: slice_devices(models), args.repeats)
    print(f"{args.nodes} slices x {GPUS} devices, {args.claims} claims allocated; median of {args.repeats}")
    print(f"{'pass':<52} | ms")
    print(f"{'-' * 52}-+------")
    print(f"{'from scratch (every device read, as before)':<52} | {before:5.1f}")
    print(f"{'slices unchanged (devices kept; claims gathered)':<52} | {now:5.1f}")
    print(f"{'reading the devices (once per change of the slices)':<52} | {reading:5.1f}")
    print(f"ratio now / before: {now / before:.2f}x")


if __name__ == "__main__":
    main()
