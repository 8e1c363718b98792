"""Keeps each ResourceSlice's status (devices, allocated, tainted, free) current: the free-devices view.

The leader recomputes the counts from its caches every `interval` seconds (dra_operator.allocation.usage) and
writes the status of the slices whose counts changed, through the status subresource (a merge patch, so the
agent's writes of the spec and ours never conflict). The interval bounds the writes: a burst of allocations
costs each touched slice one write per interval, not one per Pod; the view is at most that much behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog

from dra_operator.allocation.usage import SliceDevices, allocated_devices, avoided, count_usage, slice_devices
from dra_operator.kube.client import Kube, KubeError, NotLeading, ours
from dra_operator.operator.periodic import Kept, Unchanged, leader_passes
from dra_operator.operator.slices import slice_models
from dra_operator.operator.state import CLAIMS, SLICES, TAINT_RULES, State

log = structlog.get_logger("dra_operator.poolstatus")

DEFAULT_INTERVAL = 5.0


class PoolStatus:
    def __init__(
        self,
        kube: Kube,
        state: State,
        is_leader: Callable[[], bool],
        interval: float,
        rule_taints: Callable[[], Mapping[tuple[str, str, str], Iterable[Any]]] = dict,
    ) -> None:
        self.kube, self.state, self.is_leader, self.interval = kube, state, is_leader, interval
        self.rule_taints = rule_taints  # the DeviceTaintRules' taints per device, counted as tainted
        self.writes = 0
        self.unchanged = Unchanged(state, SLICES, CLAIMS, TAINT_RULES)
        # What each slice offers, read again only when the slices changed: in a burst of allocations only
        # claims change, and reading 40,000 devices' models cost most of a pass (5,000 slices: 30 of 45 ms).
        self._offered: Kept[dict[str, SliceDevices]] = Kept(state, SLICES)

    async def run(self) -> None:
        await leader_passes(self.interval, self.is_leader, self.update)

    async def update(self) -> int:
        """Write the status of every slice whose counts changed; returns how many were written. Skipped while
        slices, claims and taint rules are unchanged since a pass that wrote everything it meant to."""
        if self.unchanged.since_settled():
            return 0
        revisions = self.unchanged.now()
        failed = False
        slices = {str(s["metadata"]["name"]): s for s in self.state.all(SLICES)}
        offered = self._offered.get(lambda: slice_devices(slice_models(slices.values())))
        taken = allocated_devices(self.state.all(CLAIMS))
        usage = count_usage(offered, taken, avoided(self.rule_taints()))
        written = 0
        for name, counts in usage.items():
            wanted = counts.status()
            if (slices[name].get("status") or {}) == wanted:
                continue
            try:
                patched = await self.kube.merge_patch(
                    ours("resourceslices", name=name, subresource="status"), {"status": wanted}
                )
            except NotLeading:
                return written
            except KubeError as exc:
                if exc.status != 404:  # a slice withdrawn meanwhile needs no status
                    log.warning("slice status not written", slice=name, error=str(exc))
                    failed = True
                continue
            self.state.wrote(SLICES, patched, journal=False)  # status only: decisions read the spec
            written += 1
        self.writes += written
        self.unchanged.settled(None if failed else revisions)
        return written
