"""The reconciler's work queue: keys queued once each, never processed twice at once, a backlog served after
everything else, retries after a delay, and each key's failures in a row for its backoff (in the manner of
client-go's workqueue, on one asyncio loop). What an item does, and how long a failed one waits, is the
reconciler's."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

Item = tuple[str, str, str]  # (kind, namespace, name)
POD, CLAIM = "pod", "claim"  # the kinds of the reconciler's items

#: Backoff of an item whose writes keep failing: 1 s, 2 s, 4 s, ... up to these caps (seconds).
PERMANENT_BACKOFF_CAP = 300.0  # refused (400, 403, 422 Invalid): only a change of the inputs can help
TRANSIENT_BACKOFF_CAP = 30.0  # 5xx, no answer, unexpected errors: the server or the network heals


def backoff(failures: int, cap: float) -> float:
    """1 s after the first failure, doubling with each one after, up to `cap` seconds."""
    return float(min(cap, 2 ** max(0, failures - 1)))


@dataclass
class WorkQueue:
    # (priority, arrival, item): backlog items (priority 1) wait behind everything else, in arrival order.
    queue: asyncio.PriorityQueue[tuple[int, int, Item]] = field(default_factory=asyncio.PriorityQueue)
    queued: set[Item] = field(default_factory=set)  # waiting in `queue`
    active: set[Item] = field(default_factory=set)  # being processed
    retries: dict[Item, asyncio.TimerHandle] = field(default_factory=dict)  # waiting to be queued again
    _again: set[Item] = field(default_factory=set)  # queued while active: runs again once done
    _arrivals: Iterator[int] = field(default_factory=itertools.count)
    _failures: dict[Item, int] = field(default_factory=dict)

    def add(self, item: Item, *, backlog: bool = False) -> None:
        """Queue an item unless it is queued already."""
        if item not in self.queued:
            self.queued.add(item)
            self.queue.put_nowait((1 if backlog else 0, next(self._arrivals), item))

    def add_after(self, item: Item, delay: float) -> None:
        """Queue an item in `delay` seconds, unless a retry of it is already due."""
        if item in self.retries:
            return

        def fire() -> None:
            self.retries.pop(item, None)
            self.add(item)

        self.retries[item] = asyncio.get_running_loop().call_later(delay, fire)

    def busy(self) -> bool:
        """Whether an item is queued or being processed (retries not yet due do not count)."""
        return bool(self.queue.qsize() or self.active)

    def failed(self, item: Item) -> int:
        """Count one more failure of `item` in a row; returns how many there are now."""
        failures = self._failures[item] = self._failures.get(item, 0) + 1
        return failures

    def succeeded(self, item: Item) -> None:
        self._failures.pop(item, None)

    async def run(
        self, workers: int, process: Callable[[Item], Awaitable[None]], is_leader: Callable[[], bool]
    ) -> None:
        """`workers` loops taking items while this replica leads (others are dropped: a new leader queues
        everything again). An item that comes back while in progress runs again afterwards."""
        await asyncio.gather(*(self._work(process, is_leader) for _ in range(max(1, workers))))

    async def _work(self, process: Callable[[Item], Awaitable[None]], is_leader: Callable[[], bool]) -> None:
        while True:
            _, _, item = await self.queue.get()
            self.queued.discard(item)
            if not is_leader():
                continue
            if item in self.active:
                self._again.add(item)
                continue
            self.active.add(item)
            try:
                await process(item)
            finally:
                self.active.discard(item)
                if item in self._again:
                    self._again.discard(item)
                    self.add(item)
