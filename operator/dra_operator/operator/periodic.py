"""The leader's periodic passes over the caches (pool status, device health, device taints): when they run,
and when one may be skipped because nothing it reads changed since a pass that left nothing to do."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from dra_operator.operator.state import State


async def leader_passes(
    interval: float,
    is_leader: Callable[[], bool],
    one_pass: Callable[[], Awaitable[object]],
    wake: asyncio.Event | None = None,
) -> None:
    """Run `one_pass` every `interval` seconds, or as soon as `wake` is set, while this replica leads."""
    while True:
        if wake is None:
            await asyncio.sleep(interval)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), interval)
            wake.clear()
        if is_leader():
            await one_pass()


class Unchanged:
    """Whether the kinds a pass reads are unchanged since the last pass that settled everything.

    A pass over every slice and claim costs time that grows with the cluster (at 5,000 nodes, tens of
    milliseconds on the loop that also decides), so a pass whose inputs did not move since it last found
    nothing left to do is skipped. `settled` records the revisions the pass read (taken before it read them,
    so a change during the pass is not lost)."""

    def __init__(self, state: State, *kinds: str) -> None:
        self.state, self.kinds = state, kinds
        self._settled: tuple[int, ...] | None = None

    def now(self) -> tuple[int, ...]:
        return tuple(self.state.revision_of(kind) for kind in self.kinds)

    def since_settled(self) -> bool:
        return self._settled is not None and self._settled == self.now()

    def settled(self, revisions: tuple[int, ...] | None) -> None:
        """The pass that started at `revisions` left nothing to do (None: it did, look again next time)."""
        self._settled = revisions
