"""Lease leader election: one holder at a time, takeover only after expiry, a holder that cannot renew
stops."""

from __future__ import annotations

import asyncio
import copy
import itertools
from typing import Any

from dra_operator.kube.client import KubeError
from dra_operator.operator.leader import LeaseElector

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


def elector(server: LeaseServer, identity: str, events: list[str]) -> LeaseElector:
    return LeaseElector(
        server,  # type: ignore[arg-type]
        "ns",
        "lease",
        identity,
        lease_seconds=1,
        renew_deadline=0.3,
        retry=0.05,
        on_started=lambda: events.append(f"{identity} started"),
        on_stopped=lambda: events.append(f"{identity} stopped"),
    )


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


def test_holder_that_cannot_renew_stops() -> None:
    async def scenario() -> list[str]:
        server = LeaseServer()
        events: list[str] = []
        a = elector(server, "a", events)
        task = asyncio.create_task(a.run())
        await until(lambda: a.leading)
        server.down = True
        await asyncio.wait_for(task, timeout=2)  # run() returns after on_stopped
        return events

    assert asyncio.run(scenario()) == ["a started", "a stopped"]
