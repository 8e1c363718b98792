"""Our changes to Kopf 1.45's internals: a faster ToggleSet, and `hold_only` for indexed events' raw objects.

The ToggleSet (`kopf._cogs.aiokits.aiotoggles.ToggleSet`) is installed before the operator starts.

Kopf holds every watched object's handlers until all indexes have their first listing: each object of an
indexed kind gets a toggle in one ToggleSet, dropped once the object is indexed, and each object's worker
waits for the whole set to be on. Kopf's set wakes every waiter on every change (`notify_all` on one
Condition), and each waiter re-evaluates the set: at start-up that is O(N^2) wake-ups for N objects. Measured
here (bench/scale_memory.py): 5,000 Nodes, 5,000 slices and 10,000 claims did not finish in 5 minutes, the
process spending its time in `Condition.notify_all` and the wake-ups it schedules.

This set keeps a count of its toggles that are on and off, so its state is known in O(1), and wakes its
waiters only when that state flips to what they wait for. Semantics are Kopf's: `all` is on with every toggle
on (or none at all), `any` with at least one on; another function is applied to the states as Kopf does.
Kopf is pinned (pyproject.toml), and tests/unit/test_operator_kopfpatch.py holds this class to the original's
answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from kopf._cogs.aiokits import aiotoggles

_ORIGINAL = aiotoggles.ToggleSet


class CountedToggle(aiotoggles.Toggle):
    """A toggle that tells its set when it turns."""

    def __init__(self, state: bool, owner: CountingToggleSet, name: str | None = None) -> None:
        super().__init__(state, name=name)
        self._owner = owner

    async def turn_to(self, __state: bool) -> None:
        before = self.is_on()
        await super().turn_to(__state)
        if before != self.is_on():
            self._owner._turned(self, self.is_on())


class CountingToggleSet(_ORIGINAL):
    """Kopf's ToggleSet, in O(1) per change for `all` and `any`, waking waiters only when its state flips."""

    def __init__(self, fn: Callable[[Iterable[bool]], bool]) -> None:
        super().__init__(fn)
        self._function = fn
        self._on = 0
        self._off = 0
        self._waiters: dict[bool, list[asyncio.Future[None]]] = {True: [], False: []}

    def __len__(self) -> int:
        return self._on + self._off

    def __iter__(self) -> Iterator[aiotoggles.Toggle]:
        return iter(self._toggles)

    def is_on(self) -> bool:
        if self._function is all:
            return self._off == 0
        if self._function is any:
            return self._on > 0
        return self._function(toggle.is_on() for toggle in self._toggles)

    async def wait_for(self, __state: bool) -> None:
        wanted = bool(__state)
        while self.is_on() != wanted:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[wanted].append(waiter)
            await waiter

    async def make_toggle(self, __val: bool = False, *, name: str | None = None) -> aiotoggles.Toggle:
        toggle = CountedToggle(bool(__val), self, name=name)
        self._changing(lambda: self._add(toggle))
        return toggle

    async def drop_toggle(self, toggle: aiotoggles.Toggle) -> None:
        self._changing(lambda: self._discard(toggle))

    async def drop_toggles(self, toggles: Iterable[aiotoggles.Toggle]) -> None:
        def discard_all() -> None:
            for toggle in list(toggles):
                self._discard(toggle)

        self._changing(discard_all)

    def _add(self, toggle: aiotoggles.Toggle) -> None:
        self._toggles.add(toggle)
        self._count(toggle.is_on(), +1)

    def _discard(self, toggle: aiotoggles.Toggle) -> None:
        if toggle in self._toggles:
            self._toggles.discard(toggle)
            self._count(toggle.is_on(), -1)

    def _count(self, on: bool, delta: int) -> None:
        if on:
            self._on += delta
        else:
            self._off += delta

    def _turned(self, toggle: aiotoggles.Toggle, on: bool) -> None:
        def move() -> None:
            self._count(not on, -1)
            self._count(on, +1)

        if toggle in self._toggles:
            self._changing(move)

    def _changing(self, change: Callable[[], object]) -> None:
        before = self.is_on()
        change()
        after = self.is_on()
        if after != before:
            waiters, self._waiters[after] = self._waiters[after], []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


def install() -> None:
    """Make Kopf's reactor build its toggle sets from CountingToggleSet (it looks the class up in the module
    at each use: `aiotoggles.ToggleSet(all)`). Idempotent."""
    aiotoggles.ToggleSet = CountingToggleSet  # type: ignore[misc]


def hold_only(body: Mapping[str, Any], kept: Mapping[str, Any]) -> None:
    """Make the raw object behind Kopf's `body` hold `kept` (the cache's form of it) in place of what the API
    server sent.

    Kopf parks every listed object's worker, with its raw event, until all indexes have their first listing
    (see above), then runs the watch handlers. At 2,000 nodes and 4,000 claims the parked objects were 990,000
    Python objects against 283,000 once they had run, and the process's memory stayed at that peak: the
    freed space is scattered through the allocator's arenas, which the system never gets back. Our index
    functions run first and keep what any later handler reads (state.slim), so the raw object can shrink to
    that at once. Kopf 1.45's Body is a view over the raw dict (`_src`); a Kopf whose Body is not keeps its
    raw object, which is only memory (tests/unit/test_operator_kopfpatch.py fails then).
    """
    raw = getattr(body, "_src", None)
    if type(raw) is dict and raw is not kept and getattr(body, "_path", ()) == ():
        raw.clear()
        raw.update(kept)
