"""The periodic passes over the caches (the leader's pool status, device health and device taints; a standby's
warm-up): when they run, and when one may be skipped because nothing it reads changed since a pass that left
nothing to do."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import structlog

from dra_operator.operator.state import CLASSES, NODES, SLICES, TAINT_RULES, TEMPLATES, State

log = structlog.get_logger("dra_operator.operator")

T = TypeVar("T")


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


class Kept(Generic[T]):
    """A value a pass derives from the caches of `kinds`, computed again only after one of them changed or the
    journal's epoch moved. In a burst of allocations only claims change: a pass that also reads every slice
    need not gather from them each time (the slice handler journals no status-only change)."""

    def __init__(self, state: State, *kinds: str) -> None:
        self.state, self.kinds = state, kinds
        self._kept: tuple[tuple[int, ...], T] | None = None  # (epoch and revisions, value)

    def get(self, compute: Callable[[], T]) -> T:
        key = (self.state.epoch, *(self.state.revision_of(kind) for kind in self.kinds))
        if self._kept is None or self._kept[0] != key:
            self._kept = (key, compute())
        return self._kept[1]


async def standby_warm_ups(
    interval: float, is_leader: Callable[[], bool], state: State, warm: Callable[[], int]
) -> None:
    """While this replica stands by, keep its allocator warm (Reconciler.warm) for what the caches hold now:
    once, and again after classes, slices, nodes, taint rules or templates changed."""
    done: Any = None
    while True:
        await asyncio.sleep(interval)
        if is_leader():
            continue
        templates = sorted(
            (str(t["metadata"].get("uid")), str(t["metadata"].get("resourceVersion")))
            for t in state.all(TEMPLATES)
        )
        key = (state.epoch, *(state.revision_of(k) for k in (CLASSES, SLICES, NODES, TAINT_RULES)), templates)
        if key == done:
            continue
        started = time.perf_counter()
        done = key
        try:
            tried = warm()
        except Exception:  # a cache to fill, never worth the task: the leader's first decision fills it too
            log.exception("standby warm-up failed")
            continue
        log.info("standby warmed up", templates=tried, seconds=round(time.perf_counter() - started, 2))
