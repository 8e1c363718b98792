"""What one pass of the free-devices view (operator/poolstatus.py) costs the leader's loop, no API server.

At N nodes x 8 GPUs (one slice each) with C claims allocated, side by side in one run, the counting of three
ways to keep the view (the status writes and their comparisons apart):

- from scratch (`slice_usage`: every device's model read each pass, as before 2f29dd6);
- counted over every slice and claim, with the slices' devices kept while the slices are unchanged (2f29dd6
  to the third 2026-12-07 session): a pass during a burst gathers every claim's devices and counts every
  slice, and one after a slice changed reads every slice's devices again;
- the ledger (`UsageLedger`, since): a pass puts the claims and slices that changed and counts the slices
  whose counts may have moved.

Two passes are timed: one during a burst of allocations (`--changed` claims allocated since the last pass:
5 s at 50 Pods/s by default) and one after one slice changed (an agent republished its node). Prints ms per
pass (median of the repeats) and the ratios to counting over everything.

    .venv/bin/python bench/pool_status.py [--nodes 5000] [--claims 10000] [--changed 250] [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from dra_operator.allocation.usage import (
    UsageLedger,
    allocated_devices,
    claim_devices,
    count_usage,
    slice_devices,
    slice_usage,
)
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
    parser.add_argument("--changed", type=int, default=250, help="claims allocated since the last pass")
    parser.add_argument("--repeats", type=int, default=9, help="passes timed per variant (median shown)")
    args = parser.parse_args()
    models = slices(args.nodes)
    allocated = claims(models, args.claims + args.changed)
    before, burst = allocated[: args.claims], allocated[args.claims :]
    offered = slice_devices(models)
    assert count_usage(offered, allocated_devices(allocated), set()) == slice_usage(models, allocated)

    def built() -> UsageLedger:
        return UsageLedger.of(offered, ((index, claim_devices(claim)) for index, claim in enumerate(before)))

    def primed() -> UsageLedger:
        ledger = built()
        ledger.changed()
        return ledger

    ledgers: list[UsageLedger] = []
    moved: list[int] = []

    def burst_pass() -> None:
        ledger = ledgers[-1]
        for index, claim in enumerate(burst, start=len(before)):
            ledger.put_claim(index, claim_devices(claim))
        moved.append(len(ledger.changed()))

    def slice_pass() -> None:
        ledger = ledgers[-1]
        ledger.put_slice(models[0].name, slice_devices(models[:1])[models[0].name])
        moved.append(len(ledger.changed()))

    scratch = median_ms(lambda: slice_usage(models, allocated), args.repeats)
    counted = median_ms(lambda: count_usage(offered, allocated_devices(allocated), set()), args.repeats)
    counted_slice = median_ms(
        lambda: count_usage(slice_devices(models), allocated_devices(allocated), set()), args.repeats
    )
    ledger_burst = median_ms(burst_pass, args.repeats, lambda: ledgers.append(primed()))
    burst_moved = moved[-1]
    ledger_slice = median_ms(slice_pass, args.repeats, lambda: ledgers.append(primed()))
    # The ledger's counts are the full count's: checked on the last primed ledger after a burst.
    check = primed()
    for index, claim in enumerate(burst, start=len(before)):
        check.put_claim(index, claim_devices(claim))
    check.mark()
    assert check.changed() == count_usage(offered, allocated_devices(allocated), set())
    build = median_ms(built, max(1, args.repeats // 3))

    print(
        f"{args.nodes} slices x {GPUS} devices, {args.claims} claims allocated, {args.changed} more since "
        f"the last pass; median of {args.repeats}"
    )
    print(f"{'pass':<64} | ms")
    print(f"{'-' * 64}-+-------")
    rows = [
        ("from scratch (every device read, as before 2f29dd6)", scratch),
        ("burst: counted over every slice and claim, devices kept", counted),
        (f"burst: the ledger ({args.changed} claims put, {burst_moved} slices counted)", ledger_burst),
        ("one slice changed: counted over everything, devices read again", counted_slice),
        (f"one slice changed: the ledger (1 slice put, {moved[-1]} counted)", ledger_slice),
        ("the ledger built (a leadership term's first pass)", build),
    ]
    for label, ms in rows:
        print(f"{label:<64} | {ms:6.2f}")
    print(f"ratio ledger / counted over everything: burst {ledger_burst / counted:.3f}x, ", end="")
    print(f"one slice changed {ledger_slice / counted_slice:.4f}x")


if __name__ == "__main__":
    main()
