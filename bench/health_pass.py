"""What the device-health pass (operator/devicehealth.py) costs the leader's loop during a burst of
allocations, no API server.

At N nodes x 8 GPUs (one slice each) with C claims allocated and reserved, all devices healthy, `--changed`
claims change before each pass (5 s of a burst at 50 Pods/s by default). Side by side in one run, on the same
DeviceHealthWatch and caches:

- every claim: the pass as it ran before the fourth 2026-12-07 session, and as it still runs after a slice
  changed (a device's health changes only with its slice);
- the changed claims: the pass between slice changes now, which checks the claims the caches' change journal
  names since the last pass and those whose report is still owed.

Prints ms per pass (median of the repeats) and the ratio.

    .venv/bin/python bench/health_pass.py [--nodes 5000] [--claims 10000] [--changed 250] [--repeats 9]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from typing import Any

from dra_operator.controlplane import gpu_slice_manifest
from dra_operator.operator.devicehealth import DeviceHealthWatch
from dra_operator.operator.slices import cached_slice
from dra_operator.operator.state import CLAIMS, INDEXES, SLICES, State, key_of
from pool_status import median_ms

GPUS = 8
DRIVER = "driver.example.com"
Json = dict[str, Any]
VERSIONS = itertools.count(10_000_000)  # resourceVersions never seen before


class NoWrites:
    """A Kube for a pass that must write nothing (every device is healthy)."""

    async def request(self, *args: Any, **kwargs: Any) -> Json:
        raise AssertionError(f"a healthy cluster got a write: {args}")


class NoEvents:
    def warning(self, *args: Any) -> None:
        raise AssertionError(f"a healthy cluster got an event: {args}")


def claim(index: int, node: int, device: int) -> Json:
    result = {"request": "gpu", "driver": DRIVER, "pool": f"node-{node}", "device": f"gpu-{device}"}
    return {
        "metadata": {"name": f"c{index}", "namespace": "bench", "uid": f"c{index}", "resourceVersion": "1"},
        "status": {
            "allocation": {"devices": {"results": [result]}},
            "reservedFor": [{"resource": "pods", "name": f"p{index}", "uid": f"p{index}"}],
        },
    }


def caches(nodes: int, claims: int) -> State:
    """The operator's caches with `nodes` slices of 8 GPUs (parsed on arrival, as the watch handler does)
    and `claims` claims reserved, one device each, filling the nodes in order."""
    slices = []
    for n in range(nodes):
        manifest = gpu_slice_manifest(f"node-{n}", {f"gpu-{i}": "80Gi" for i in range(GPUS)})
        manifest["metadata"].update(uid=f"slice-{n}", resourceVersion=str(n + 1), generation=1)
        slices.append(cached_slice(manifest))
    state = State()
    objects = {SLICES: slices, CLAIMS: [claim(i, i // GPUS, i % GPUS) for i in range(claims)]}
    state.bind({name: {key_of(o): [o] for o in objects.get(name, [])} for name in INDEXES})
    return state


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=5000, help="fake nodes, one slice of 8 GPUs each")
    parser.add_argument("--claims", type=int, default=10000, help="claims allocated, one device each")
    parser.add_argument("--changed", type=int, default=250, help="claims changed before each pass")
    parser.add_argument("--repeats", type=int, default=9, help="passes timed per variant (median shown)")
    args = parser.parse_args()
    if args.claims > args.nodes * GPUS:
        parser.error(f"{args.claims} claims need more than {args.nodes * GPUS} devices")
    state = caches(args.nodes, args.claims)
    assert state.indexes is not None
    watch = DeviceHealthWatch(NoWrites(), state, NoEvents(), lambda: True)  # type: ignore[arg-type]
    asyncio.run(watch.check())  # the first pass: the slices' devices gathered, kept from here on
    turn = itertools.count()

    def change_some() -> None:
        """New versions of the next `--changed` claims, journaled as the claims' watch handler does."""
        for _ in range(args.changed):
            index = next(turn) % args.claims
            changed = claim(index, index // GPUS, index % GPUS)
            changed["metadata"]["resourceVersion"] = str(next(VERSIONS))
            state.indexes[CLAIMS][key_of(changed)] = [changed]  # type: ignore[index]
            state.touch(CLAIMS, key_of(changed))

    def every_claim() -> None:
        change_some()
        watch._read = None  # as after a slice change, without gathering the slices' devices again

    def one_pass() -> None:
        asyncio.run(watch.check())

    every = median_ms(one_pass, args.repeats, every_claim)
    changed = median_ms(one_pass, args.repeats, change_some)
    print(
        f"{args.nodes} slices x {GPUS} devices, {args.claims} claims reserved, {args.changed} changed before "
        f"each pass; median of {args.repeats}"
    )
    print(f"{'device-health pass during a burst':<48} | ms")
    print(f"{'-' * 48}-+------")
    print(f"{'every claim (before; still after a slice change)':<48} | {every:5.2f}")
    print(f"{'the changed claims (now)':<48} | {changed:5.2f}")
    print(f"ratio now / before: {changed / every:.3f}x")


if __name__ == "__main__":
    main()
