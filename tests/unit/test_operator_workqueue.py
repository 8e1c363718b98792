"""The reconciler's work queue on its own: once-only queueing, the backlog last, no item twice at once,
delayed retries, failures in a row."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from dra_operator.operator.workqueue import Item, WorkQueue, backoff

A: Item = ("pod", "ns", "a")
B: Item = ("pod", "ns", "b")
BULK: Item = ("claim", "ns", "bulk")


async def until(condition: Callable[[], object]) -> None:
    """Let the loop run until `condition` holds (2 s at most): the queue's state, polled on its own loop."""
    async with asyncio.timeout(2):
        while not condition():  # noqa: ASYNC110 - plain attributes, no event to wait on
            await asyncio.sleep(0)


def test_an_item_is_queued_once_and_the_backlog_waits_behind_the_rest() -> None:
    async def order() -> list[Item]:
        work = WorkQueue()
        work.add(BULK, backlog=True)
        work.add(A)
        work.add(A)
        work.add(B)
        taken = []
        while work.queue.qsize():
            taken.append((await work.queue.get())[2])
        return taken

    assert asyncio.run(order()) == [A, B, BULK]


def test_an_item_added_while_in_progress_runs_again_afterwards_never_alongside() -> None:
    async def scenario() -> tuple[list[str], int]:
        work = WorkQueue()
        log: list[str] = []
        running = 0
        most = 0
        release = asyncio.Event()

        async def process(item: Item) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            log.append(f"start {item[2]}")
            if len(log) == 1:
                await release.wait()
            running -= 1
            log.append(f"end {item[2]}")

        runner = asyncio.create_task(work.run(4, process, lambda: True))
        work.add(A)
        await until(lambda: work.active)
        work.add(A)  # while A is in progress: four workers, yet it must wait
        await asyncio.sleep(0)
        release.set()
        await until(lambda: not work.busy() and len(log) == 4)
        runner.cancel()
        return log, most

    log, most = asyncio.run(scenario())
    assert log == ["start a", "end a", "start a", "end a"]
    assert most == 1


def test_items_are_dropped_while_not_leading() -> None:
    async def scenario() -> list[Item]:
        work = WorkQueue()
        done: list[Item] = []

        async def process(item: Item) -> None:
            done.append(item)

        leading = False
        runner = asyncio.create_task(work.run(1, process, lambda: leading))
        work.add(A)
        await until(lambda: not work.queue.qsize())
        leading = True
        work.add(B)
        await until(lambda: done)
        runner.cancel()
        return done

    assert asyncio.run(scenario()) == [B]


def test_a_retry_is_scheduled_once_and_queues_the_item_when_due() -> None:
    async def scenario() -> tuple[int, bool]:
        work = WorkQueue()
        work.add_after(A, 0.01)
        work.add_after(A, 5.0)  # a retry is due already: not pushed back
        scheduled = len(work.retries)
        async with asyncio.timeout(2):
            while A not in work.queued:  # noqa: ASYNC110 - the retry's timer, polled on its loop
                await asyncio.sleep(0.005)
        return scheduled, bool(work.retries)

    assert asyncio.run(scenario()) == (1, False)


def test_failures_count_in_a_row_until_a_success() -> None:
    work = WorkQueue()
    assert [work.failed(A) for _ in range(3)] == [1, 2, 3]
    assert work.failed(B) == 1
    work.succeeded(A)
    assert work.failed(A) == 1
    assert [backoff(n, 10.0) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
