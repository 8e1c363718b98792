"""Lease leader election: one holder at a time, takeover only after expiry, a holder that cannot renew
stands down (and campaigns again), a paused holder knows on waking that it no longer leads, and the renew
deadline follows the lease."""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from typing import Any

import pytest

from dra_operator.kube.client import KubeError
from dra_operator.operator.leader import ElectionThread, LeaseElector, LeaseTooShort, timings

Json = dict[str, Any]


class LeaseServer:
    """One Lease object with resourceVersion preconditions; `down` makes every call fail."""

    def __init__(self) -> None:
        self.lease: Json | None = None
        self.rv = itertools.count(1)
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise KubeError(503, "unavailable")

    async def get(self, path: str) -> Json | None:
        self._check()
        return copy.deepcopy(self.lease)

    async def create(self, path: str, body: Json) -> Json:
        self._check()
        if self.lease is not None:
            raise KubeError(409, "AlreadyExists")
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(next(self.rv))
        return copy.deepcopy(self.lease)

    async def replace(self, path: str, body: Json) -> Json:
        self._check()
        assert self.lease is not None
        if body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise KubeError(409, "Conflict")
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(next(self.rv))
        return copy.deepcopy(self.lease)


async def until(predicate: Any, limit: float = 3.0) -> None:
    """Wait for a condition (polling the event loop), failing after `limit` seconds."""
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110 - a plain predicate over the fake server's state
            await asyncio.sleep(0.01)


def elector(server: LeaseServer, identity: str, events: list[str], **overrides: Any) -> LeaseElector:
    """A fast elector (1 s lease) on the fake server, recording its callbacks in `events`; `overrides` go
    to LeaseElector as they are."""
    settings: dict[str, Any] = {
        "lease_seconds": 1,
        "renew_deadline": 0.3,
        "retry": 0.05,
        "on_started": lambda: events.append(f"{identity} started"),
        "on_stopped": lambda: events.append(f"{identity} stopped"),
    }
    return LeaseElector(server, "ns", "lease", identity, **(settings | overrides))  # type: ignore[arg-type]


def test_one_leader_then_takeover_after_expiry() -> None:
    async def scenario() -> list[str]:
        server = LeaseServer()
        events: list[str] = []
        a, b = elector(server, "a", events), elector(server, "b", events)
        task_a = asyncio.create_task(a.run())
        await until(lambda: a.leading)
        task_b = asyncio.create_task(b.run())
        renewals = server.lease["spec"]["renewTime"] if server.lease else None
        await until(lambda: server.lease is not None and server.lease["spec"]["renewTime"] != renewals)
        assert a.leading and not b.leading
        task_a.cancel()  # a dies without releasing: b waits for the lease to expire on its own clock
        await until(lambda: b.leading)
        assert server.lease is not None and server.lease["spec"]["leaseTransitions"] == 1
        task_b.cancel()
        return events

    assert asyncio.run(scenario()) == ["a started", "b started"]


def test_graceful_release_hands_over_at_once() -> None:
    async def scenario() -> tuple[bool, bool]:
        server = LeaseServer()
        events: list[str] = []
        a, b = elector(server, "a", events), elector(server, "b", events)
        task_a = asyncio.create_task(a.run())
        await until(lambda: a.leading)
        task_a.cancel()
        await a.release()
        task_b = asyncio.create_task(b.run())
        await until(lambda: b.leading, limit=0.5)  # well before the 1 s lease could expire
        task_b.cancel()
        return a.leading, b.leading

    assert asyncio.run(scenario()) == (False, True)


def test_holder_that_cannot_renew_stands_down_and_leads_again() -> None:
    async def scenario() -> list[str]:
        server = LeaseServer()
        events: list[str] = []
        a = elector(server, "a", events)
        task = asyncio.create_task(a.run())
        await until(lambda: a.leading)
        server.down = True
        await until(lambda: "a stopped" in events)  # within the renew deadline, without exiting
        assert not a.leading and not task.done()
        server.down = False
        await until(lambda: a.leading)  # nobody else took it: its own record is renewed
        task.cancel()
        return events

    assert asyncio.run(scenario()) == ["a started", "a stopped", "a started"]


def test_a_paused_holder_does_not_lead_on_waking() -> None:
    """`leading` is read from the clock: after a pause past the renew deadline it is False at once, before
    the renew loop runs again (the writes it guards are withheld)."""
    now = [100.0]
    server = LeaseServer()
    a = elector(server, "a", [], lease_seconds=6, renew_deadline=None, retry=None, clock=lambda: now[0])
    assert (a.renew_deadline, a.retry) == (4.0, 0.8)

    async def scenario() -> None:
        task = asyncio.create_task(a.run())
        await until(lambda: a.leading)
        task.cancel()

    asyncio.run(scenario())
    now[0] += 3.9
    assert a.leading
    now[0] += 0.2  # past the renew deadline (SIGSTOP, a starved CPU): no renewal ran meanwhile
    assert not a.leading


@pytest.mark.parametrize(("lease", "deadline", "retry"), [(15, 10.0, 2.0), (5, 10 / 3, 2 / 3), (3, 2.0, 0.4)])
def test_renew_deadline_follows_the_lease(lease: int, deadline: float, retry: float) -> None:
    assert timings(lease) == pytest.approx((deadline, retry))
    assert retry < deadline < lease


@pytest.mark.parametrize("lease", [0, 1, 2])
def test_a_lease_too_short_is_refused(lease: int) -> None:
    with pytest.raises(LeaseTooShort, match="too short to renew safely"):
        timings(lease)
    with pytest.raises(LeaseTooShort):
        LeaseElector(None, "ns", "n", "a", lease_seconds=lease)  # type: ignore[arg-type]


def test_a_renewal_after_the_deadline_ends_the_term_and_starts_a_new_one() -> None:
    """A holder starved past its deadline (its items dropped, its writes withheld) that then renews its own
    record still stands down first, so that the next term starts afresh (the operator looks at every item)."""
    now = [100.0]
    server = LeaseServer()
    events: list[str] = []
    a = elector(
        server,
        "a",
        events,
        lease_seconds=6,
        renew_deadline=4.0,
        retry=0.01,
        on_started=lambda: events.append("started"),
        on_stopped=lambda: events.append("stopped"),
        clock=lambda: now[0],
    )

    async def scenario() -> None:
        task = asyncio.create_task(a.run())
        await until(lambda: a.leading)
        now[0] += 5.0  # the loop stalled past the deadline; the next renewal lands at once
        await until(lambda: len(events) == 3)
        assert a.leading
        task.cancel()

    asyncio.run(scenario())
    assert events == ["started", "stopped", "started"]


def test_the_election_thread_keeps_leading_while_the_callers_loop_is_blocked() -> None:
    """Renewals run on the thread's own loop: a caller's loop busy past the renew deadline (here blocked
    outright) does not end the term; callbacks reach the caller's loop; stopping hands the Lease over."""
    server = LeaseServer()
    events: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        closed: list[bool] = []

        async def close() -> None:
            closed.append(True)

        def make() -> tuple[LeaseElector, Any]:
            started = lambda: loop.call_soon_threadsafe(events.append, "started")  # noqa: E731
            stopped = lambda: loop.call_soon_threadsafe(events.append, "stopped")  # noqa: E731
            return elector(server, "a", events, on_started=started, on_stopped=stopped), close

        thread = ElectionThread(make)
        thread.start()
        await until(lambda: events == ["started"])
        renewed = server.lease["spec"]["renewTime"] if server.lease else None
        time.sleep(1.0)  # noqa: ASYNC251 - the point: this loop does nothing for over 3 deadlines
        assert thread.leading
        assert server.lease is not None and server.lease["spec"]["renewTime"] != renewed
        await thread.stop()
        assert not thread.leading and closed == [True]
        assert server.lease is not None and server.lease["spec"]["holderIdentity"] is None

    asyncio.run(scenario())
    assert events == ["started"]
