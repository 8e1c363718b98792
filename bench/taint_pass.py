"""What the device-taint pass (operator/taintrules.py) costs the leader's loop after one slice changed, no API
server.

Every slice event wakes the pass, and a changed slice voids what it kept, so at N nodes x 8 GPUs (one slice
each, no DeviceTaintRule: most clusters have none) it gathers every device's taints again. Side by side in one
run, on the same Allocator (slice models cached per version, as in the operator):

- as before: each device's (id, slice, device) tuple built twice, once for the rules (even with none) and once
  for the taints, and the rules' cache signature sorted over every slice;
- now: no pass for rules when there are none, and the taints read slice by slice without a tuple per device.

Prints ms per pass (median of the repeats, a different slice changed before each) and the ratio.

Then the whole pass (operator.taintrules.TaintRules.check) during a burst of allocations, with `--claims`
claims reserved and one changed before each pass, no taint with effect NoExecute: as before the fourth
2026-12-07 session (every claim read, though only NoExecute taints evict) against now (no claim read unless a
device has such a taint), and the ratio.

    .venv/bin/python bench/taint_pass.py [--nodes 5000] [--claims 10000] [--repeats 9]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import itertools
from collections.abc import Sequence
from typing import Any

from dra_operator.allocation.taints import current_devices, device_taints, rule_taints
from dra_operator.api.resource import DeviceTaint, ResourceSlice
from dra_operator.controlplane import gpu_slice_manifest
from dra_operator.operator.allocating import Allocator, _spec_versions
from dra_operator.operator.state import CLAIMS, State, key_of
from dra_operator.operator.taintrules import TaintRules
from health_pass import NoEvents, NoWrites, caches, claim
from pool_status import median_ms

GPUS = 8
Json = dict[str, Any]
VERSIONS = itertools.count(10_000_000)  # resourceVersions never seen before


def manifests(nodes: int) -> list[Json]:
    found = []
    for n in range(nodes):
        manifest = gpu_slice_manifest(f"node-{n}", {f"gpu-{i}": "80Gi" for i in range(GPUS)})
        manifest["metadata"].update(uid=f"slice-{n}", resourceVersion=str(n + 1), generation=1)
        found.append(manifest)
    return found


def before(allocator: Allocator, slices: Sequence[Json]) -> object:
    """The pass as it was: a signature over every slice and a tuple per device, twice."""
    models: list[ResourceSlice] = allocator.slice_models(slices)
    _spec_versions(slices)  # the rules' cache signature, taken even with no rules
    ruled = rule_taints([], models, allocator.selectors)
    current_devices(models)  # rule_taints gathered them before it looked at the (absent) rules
    found: dict[Any, tuple[DeviceTaint, ...]] = {}
    for device_id, _, device in current_devices(models):
        if device.taints and device_id not in found:
            found[device_id] = tuple(device.taints)
    return ruled, found


def now(allocator: Allocator, slices: Sequence[Json]) -> object:
    """The pass as operator.taintrules gathers it now."""
    ruled = allocator.rule_taints(slices, [])
    return ruled, device_taints(allocator.slice_models(slices), ruled.by_device)


def change_one(slices: list[Json]) -> None:
    """A new version of one slice (the next in turn): its model is parsed again, the others' are kept."""
    i = next(VERSIONS) % len(slices)
    changed = copy.deepcopy(slices[i])
    changed["metadata"]["resourceVersion"] = str(next(VERSIONS))
    changed["metadata"]["generation"] += 1
    slices[i] = changed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=5000, help="fake nodes, one slice of 8 GPUs each")
    parser.add_argument("--claims", type=int, default=10000, help="claims reserved, one device each")
    parser.add_argument("--repeats", type=int, default=9, help="passes timed per variant (median shown)")
    args = parser.parse_args()
    slices = manifests(args.nodes)
    allocator = Allocator()
    assert before(allocator, slices) == now(allocator, slices)  # the same answer (and the models parsed)
    old = median_ms(lambda: before(allocator, slices), args.repeats, lambda: change_one(slices))
    new = median_ms(lambda: now(allocator, slices), args.repeats, lambda: change_one(slices))
    print(f"{args.nodes} slices x {GPUS} devices, no DeviceTaintRule; median of {args.repeats}")
    print(f"{'taint pass after a slice change':<40} | ms")
    print(f"{'-' * 40}-+------")
    print(f"{'as before':<40} | {old:5.1f}")
    print(f"{'now':<40} | {new:5.1f}")
    print(f"ratio now / before: {new / old:.2f}x")

    if args.claims > args.nodes * GPUS:
        parser.error(f"{args.claims} claims need more than {args.nodes * GPUS} devices")
    burst_before, burst_now = burst(caches(args.nodes, args.claims), args.repeats)
    print()
    print(f"{args.claims} claims reserved, one changed before each pass, no NoExecute taint")
    print(f"{'whole taint pass during a burst':<40} | ms")
    print(f"{'-' * 40}-+------")
    print(f"{'as before (every claim read)':<40} | {burst_before:5.2f}")
    print(f"{'now':<40} | {burst_now:5.2f}")
    print(f"ratio now / before: {burst_now / burst_before:.3f}x")


def burst(state: State, repeats: int) -> tuple[float, float]:
    """ms per whole pass during a burst (median): as before, and now."""
    watcher = TaintRules(NoWrites(), state, NoEvents(), Allocator(), lambda: True)  # type: ignore[arg-type]
    asyncio.run(watcher.check())  # the devices' taints gathered, kept from here on

    def change_one() -> None:
        changed = claim(0, 0, 0)
        changed["metadata"]["resourceVersion"] = str(next(VERSIONS))
        state.indexes[CLAIMS][key_of(changed)] = [changed]  # type: ignore[index]
        state.touch(CLAIMS, key_of(changed))

    def as_before() -> None:
        asyncio.run(watcher.check())
        list(state.all(CLAIMS))  # what the pass read before, even with no taint to evict by

    return (
        median_ms(as_before, repeats, change_one),
        median_ms(lambda: asyncio.run(watcher.check()), repeats, change_one),
    )


if __name__ == "__main__":
    main()
