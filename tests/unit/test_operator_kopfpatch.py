"""The counting ToggleSet that replaces Kopf's: the same answers as Kopf's own class for any sequence of
changes, waiters woken when (and only when) the set reaches their state, and no quadratic start-up."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable
from typing import Any

import kopf
import pytest
from kopf._cogs.aiokits import aiotoggles

from dra_operator.operator import kopfpatch
from dra_operator.operator.kopfpatch import CountingToggleSet

KopfToggleSet = kopfpatch._ORIGINAL


def majority(states: Iterable[bool]) -> bool:
    values = list(states)
    return sum(values) * 2 > len(values)


@pytest.mark.parametrize("fn", [all, any, majority])
@pytest.mark.parametrize("seed", range(20))
def test_the_counting_set_answers_as_kopfs_for_any_sequence_of_changes(
    fn: Callable[[Iterable[bool]], bool], seed: int
) -> None:
    rng = random.Random(seed)

    async def scenario() -> None:
        ours, theirs = CountingToggleSet(fn), KopfToggleSet(fn)
        pairs: list[tuple[aiotoggles.Toggle, aiotoggles.Toggle]] = []
        for _ in range(60):
            action = rng.choice(["make", "make", "drop", "drop_many", "turn"])
            if action == "make" or not pairs:
                value = rng.random() < 0.5
                pairs.append((await ours.make_toggle(value), await theirs.make_toggle(value)))
            elif action == "drop":
                mine, kopfs = pairs.pop(rng.randrange(len(pairs)))
                await ours.drop_toggle(mine)
                await ours.drop_toggle(mine)  # twice: Kopf tolerates it
                await theirs.drop_toggle(kopfs)
            elif action == "drop_many":
                some = rng.sample(pairs, k=min(len(pairs), 2))
                await ours.drop_toggles(m for m, _ in some)
                await theirs.drop_toggles(k for _, k in some)
                pairs = [p for p in pairs if p not in some]
            else:
                mine, kopfs = rng.choice(pairs)
                value = rng.random() < 0.5
                await mine.turn_to(value)
                await kopfs.turn_to(value)
            assert ours.is_on() == theirs.is_on() and ours.is_off() == theirs.is_off()
            assert len(ours) == len(theirs)
            assert sorted(t.is_on() for t in ours) == sorted(t.is_on() for t in theirs)

    asyncio.run(scenario())


def test_waiters_wake_when_the_set_reaches_their_state_and_not_before() -> None:
    async def scenario() -> None:
        toggles = CountingToggleSet(all)
        blocker = await toggles.make_toggle(False)
        woken: list[str] = []

        async def waiter(name: str) -> None:
            await toggles.wait_for(True)
            woken.append(name)

        tasks = [asyncio.create_task(waiter(f"w{i}")) for i in range(3)]
        other = await toggles.make_toggle(False)
        await toggles.drop_toggle(blocker)
        await asyncio.sleep(0)
        assert woken == [], "one toggle is still off"
        await other.turn_to(True)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
        assert sorted(woken) == ["w0", "w1", "w2"]
        await toggles.wait_for(True)  # already on: returns at once
        off = asyncio.create_task(toggles.wait_for(False))
        await asyncio.sleep(0)
        await toggles.make_toggle(False)
        await asyncio.wait_for(off, timeout=5)

    asyncio.run(scenario())


def test_install_makes_kopfs_reactor_build_counting_sets() -> None:
    kopfpatch.install()
    try:
        assert isinstance(aiotoggles.ToggleSet(all), CountingToggleSet)
    finally:
        aiotoggles.ToggleSet = KopfToggleSet  # type: ignore[misc]


def counting(cls: type[aiotoggles.ToggleSet]) -> type[aiotoggles.ToggleSet]:
    """`cls`, counting how often a set evaluates its state: by waiters woken to re-check, and on changes."""

    class Counted(cls):  # type: ignore[valid-type,misc]
        evaluations = 0

        def is_on(self) -> bool:
            type(self).evaluations += 1
            return bool(super().is_on())

    return Counted


def start_up(cls: type[aiotoggles.ToggleSet], objects: int) -> int:
    """Kopf's start-up pattern: a toggle per object, every object's worker waiting for the whole set, each
    toggle dropped once its object is indexed; how often the set's state was evaluated until every worker
    went on (a count, not a time: the work each wake-up costs, free of the machine's speed)."""
    toggle_set = counting(cls)(all)

    async def scenario() -> None:
        listing = await toggle_set.make_toggle(False)  # the resource kind's listing is not done yet
        workers = []
        for _ in range(objects):
            toggle = await toggle_set.make_toggle(False)

            async def worker(toggle: aiotoggles.Toggle = toggle) -> None:
                await toggle_set.drop_toggle(toggle)
                await toggle_set.wait_for(True)

            workers.append(asyncio.create_task(worker()))
            await asyncio.sleep(0)
        await toggle_set.drop_toggle(listing)
        await asyncio.wait_for(asyncio.gather(*workers), timeout=60)

    asyncio.run(scenario())
    return type(toggle_set).evaluations


def test_start_up_grows_linearly_with_the_objects_where_kopfs_grows_quadratically() -> None:
    # 4x the objects: the counting set evaluates its state about 4x as often, Kopf's class about 16x.
    ours = start_up(CountingToggleSet, 800) / start_up(CountingToggleSet, 200)
    theirs = start_up(KopfToggleSet, 800) / start_up(KopfToggleSet, 200)
    assert 3 < ours < 5, f"counting set: 4x the objects, {ours:.1f}x the evaluations"
    assert theirs > 12, f"Kopf's own set: 4x the objects, {theirs:.1f}x the evaluations (expected quadratic)"


def test_hold_only_needs_kopfs_body_to_be_a_view_over_the_raw_dict() -> None:
    # Kopf is pinned; if a release changes Body, this says so (hold_only then keeps the raw object as it is).
    raw: dict[str, Any] = {"metadata": {"name": "x", "managedFields": []}, "status": {}}
    body = kopf.Body(raw)
    assert getattr(body, "_src", None) is raw
    kopfpatch.hold_only(body, {"metadata": {"name": "x"}})
    assert raw == {"metadata": {"name": "x"}} and dict(body) == raw
    nested = kopf.Body(raw).metadata  # a view of a part: left alone
    kopfpatch.hold_only(nested, {})
    assert raw == {"metadata": {"name": "x"}}
