"""A standby's warm-up passes: once per change of what the allocator reads, never while leading, and a failed
warm-up neither ends the task nor repeats until something changes."""

from __future__ import annotations

import asyncio
from typing import Any

from dra_operator.operator.periodic import standby_warm_ups
from dra_operator.operator.state import INDEXES, SLICES, State


def test_warm_ups_follow_changes_and_survive_a_failure() -> None:
    state = State()
    state.bind({name: {} for name in INDEXES})
    leading = [False]
    calls: list[int] = []

    def warm() -> int:
        calls.append(state.revision_of(SLICES))
        if len(calls) == 1:
            raise RuntimeError("a template the allocator chokes on")
        return 1

    async def until(predicate: Any) -> None:
        async with asyncio.timeout(3):
            while not predicate():  # noqa: ASYNC110 - polling the fake's call list
                await asyncio.sleep(0.005)

    async def scenario() -> None:
        task = asyncio.create_task(standby_warm_ups(0.01, lambda: leading[0], state, warm))
        await until(lambda: len(calls) == 1)
        await asyncio.sleep(0.1)  # ten intervals: nothing changed, so no second try
        assert calls == [0]
        state.touch(SLICES, ("", "slice-a"))
        await until(lambda: len(calls) == 2)
        leading[0] = True
        state.touch(SLICES, ("", "slice-b"))
        await asyncio.sleep(0.1)
        assert len(calls) == 2, "a leader does not warm up"
        task.cancel()

    asyncio.run(scenario())
    assert calls == [0, 1]
