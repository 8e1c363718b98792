"""The informers: a paged list into the cache, events held until open, a watch resumed where it ended, a
relist after expiry that hands over only what changed (and what vanished, as DELETED), failures retried."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from dra_operator.kube.rest import KubeError
from dra_operator.operator.informer import Informer

Json = dict[str, Any]
PATH = "/apis/resource.dra-operator.io/v1/resourceclaims"
END = object()  # ends the current watch stream


def obj(name: str, rv: int, **spec: Any) -> Json:
    return {
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": str(rv), "managedFields": ["x"]},
        "spec": spec,
    }


def form(raw: Json) -> Json:
    """What the test's cache keeps: the object without its managedFields."""
    meta = {k: v for k, v in raw["metadata"].items() if k != "managedFields"}
    return {**raw, "metadata": meta}


class FakeServer:
    """Lists `objects` in pages (answering with `rv`); each watch request reads `events` until END."""

    def __init__(self, objects: list[Json], rv: int) -> None:
        self.objects, self.rv = objects, rv
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.lists: list[list[tuple[str, str]]] = []
        self.watches: list[list[tuple[str, str]]] = []
        self.list_failures: list[KubeError] = []  # raised by the next list calls, one each
        self.page_failures: dict[int, KubeError] = {}  # page number (from 0) -> raised once

    async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Json:
        query = dict(kw.get("query") or [])
        self.lists.append(list(kw.get("query") or []))
        if self.list_failures:
            raise self.list_failures.pop(0)
        start = int(query.get("continue", "0"))
        page_no = start // int(query["limit"])
        if page_no in self.page_failures:
            raise self.page_failures.pop(page_no)
        end = start + int(query["limit"])
        meta: Json = {"resourceVersion": str(self.rv)}
        if end < len(self.objects):
            meta["continue"] = str(end)
        return {"items": [dict(o) for o in self.objects[start:end]], "metadata": meta}

    async def watch(
        self, path: str, query: list[tuple[str, str]], read_timeout: float
    ) -> AsyncIterator[Json]:
        self.watches.append(query)
        while True:
            item = await self.events.get()
            if item is END:
                return
            if isinstance(item, Exception):
                raise item
            yield item


class Run:
    """An informer over a FakeServer, with the events it handed over."""

    def __init__(self, server: FakeServer, fail_on: str | None = None) -> None:
        self.server = server
        self.handed: list[tuple[str | None, str, str | None]] = []  # (type, name@rv, old's rv)

        def on_event(kind: str | None, kept: Json, old: Json | None) -> None:
            meta = kept["metadata"]
            if meta["name"] == fail_on:
                raise RuntimeError("a handler's bug")
            old_rv = old["metadata"]["resourceVersion"] if old else None
            self.handed.append((kind, f"{meta['name']}@{meta['resourceVersion']}", old_rv))

        self.informer = Informer(
            server, "claims", [PATH], form=form, on_event=on_event, page=2, backoffs=(0.0,)
        )

    def cached(self) -> dict[str, str]:
        return {k[1]: v[0]["metadata"]["resourceVersion"] for k, v in self.informer.store.items()}


def scenario(body: Callable[[Run], Awaitable[None]], server: FakeServer, fail_on: str | None = None) -> Run:
    run = Run(server, fail_on)

    async def main() -> None:
        task = asyncio.create_task(run.informer.run())
        try:
            async with asyncio.timeout(5):
                await body(run)
        finally:
            task.cancel()

    asyncio.run(main())
    return run


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110 - polling the fake's records
        await asyncio.sleep(0.001)


def test_a_paged_listing_fills_the_cache_and_its_events_wait_for_open() -> None:
    objects = [obj(f"c{i}", 10 + i) for i in range(5)]

    async def body(run: Run) -> None:
        await run.informer.listed()
        assert run.cached() == {f"c{i}": str(10 + i) for i in range(5)}
        assert all("managedFields" not in v[0]["metadata"] for v in run.informer.store.values())
        assert [dict(q).get("continue") for q in run.server.lists] == [None, "2", "4"]
        assert all(dict(q)["limit"] == "2" for q in run.server.lists)
        await asyncio.sleep(0.01)
        assert run.handed == [] and run.server.watches == [], "nothing before open"
        run.informer.open()
        await until(lambda: len(run.server.watches) == 1)
        assert run.handed == [(None, f"c{i}@{10 + i}", None) for i in range(5)]
        assert ("resourceVersion", "20") in run.server.watches[0]
        assert ("allowWatchBookmarks", "true") in run.server.watches[0]

    scenario(body, FakeServer(objects, rv=20))


def test_watch_events_reach_the_cache_before_their_handler_with_what_it_held() -> None:
    async def body(run: Run) -> None:
        run.informer.open()
        await until(lambda: len(run.server.watches) == 1)
        run.handed.clear()
        for event in (
            {"type": "MODIFIED", "object": obj("a", 21, size=2)},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "22"}}},
            {"type": "ADDED", "object": obj("b", 23)},
            {"type": "DELETED", "object": obj("a", 24)},
        ):
            run.server.events.put_nowait(event)
        await until(lambda: len(run.handed) == 3)
        assert run.handed == [("MODIFIED", "a@21", "10"), ("ADDED", "b@23", None), ("DELETED", "a@24", "21")]
        assert run.cached() == {"b": "23"}

    scenario(body, FakeServer([obj("a", 10)], rv=20))


def test_a_watch_the_server_ends_resumes_from_the_last_version_without_listing() -> None:
    async def body(run: Run) -> None:
        run.informer.open()
        await until(lambda: len(run.server.watches) == 1)
        run.server.events.put_nowait({"type": "ADDED", "object": obj("b", 30)})
        run.server.events.put_nowait({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "35"}}})
        run.server.events.put_nowait(END)
        await until(lambda: len(run.server.watches) == 2)
        assert ("resourceVersion", "35") in run.server.watches[1]
        run.server.events.put_nowait(KubeError(0, "Unreachable"))  # the connection drops: watched again
        await until(lambda: len(run.server.watches) == 3)
        assert ("resourceVersion", "35") in run.server.watches[2]
        assert len(run.server.lists) == 1 and run.informer.relists == 0

    scenario(body, FakeServer([obj("a", 10)], rv=20))


def test_an_expired_watch_lists_again_and_hands_over_only_what_changed() -> None:
    server = FakeServer([obj("same", 1), obj("changed", 2), obj("gone", 3)], rv=20)

    async def body(run: Run) -> None:
        run.informer.open()
        await until(lambda: len(run.server.watches) == 1)
        run.handed.clear()
        # Meanwhile, unseen by the watch: one changed, one deleted, one created.
        server.objects = [obj("same", 1), obj("changed", 40, size=1), obj("new", 41)]
        server.rv = 42
        server.events.put_nowait({"type": "ERROR", "object": {"code": 410, "reason": "Expired"}})
        await until(lambda: len(run.server.watches) == 2)
        assert sorted(run.handed, key=str) == [
            ("DELETED", "gone@42", "3"),  # gone as of the list's resourceVersion, as a DELETED event says
            (None, "changed@40", "2"),
            (None, "new@41", None),
        ]
        assert run.cached() == {"same": "1", "changed": "40", "new": "41"}
        assert ("resourceVersion", "42") in run.server.watches[1]
        assert run.informer.relists == 1

    scenario(body, server)


def test_a_list_that_fails_half_way_changes_nothing_and_is_tried_again() -> None:
    server = FakeServer([obj(f"c{i}", i) for i in range(5)], rv=9)
    server.list_failures.append(KubeError(0, "Unreachable"))
    server.page_failures[1] = KubeError(500, "InternalError")

    async def body(run: Run) -> None:
        run.informer.open()
        await until(lambda: len(run.server.watches) == 1)
        # 1 refused, 2 pages then a failure, then 3 pages
        assert [dict(q).get("continue") for q in run.server.lists] == [None, None, "2", None, "2", "4"]
        assert sorted(run.handed) == [(None, f"c{i}@{i}", None) for i in range(5)], "each once"

    scenario(body, server)


def test_a_handlers_failure_is_logged_and_the_next_event_still_arrives() -> None:
    async def body(run: Run) -> None:
        run.informer.open()
        await until(lambda: len(run.server.watches) == 1)
        run.server.events.put_nowait({"type": "ADDED", "object": obj("bad", 30)})
        run.server.events.put_nowait({"type": "ADDED", "object": obj("good", 31)})
        await until(lambda: ("ADDED", "good@31", None) in run.handed)
        assert run.cached() == {"a": "10", "bad": "30", "good": "31"}

    scenario(body, FakeServer([obj("a", 10)], rv=20), fail_on="bad")


@pytest.mark.parametrize("scopes", [["/api/v1/namespaces/a/x", "/api/v1/namespaces/b/x"]])
def test_every_scope_must_list_before_the_cache_counts_as_complete(scopes: list[str]) -> None:
    class TwoScopes(FakeServer):
        async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Json:
            if path.endswith("/b/x"):
                await release.wait()
            return await super().request(method, path, body, **kw)

    release = asyncio.Event()
    server = TwoScopes([obj("a", 1)], rv=5)

    async def main() -> None:
        informer = Informer(server, "x", scopes, form=form, on_event=lambda *_: None, page=10)
        task = asyncio.create_task(informer.run())
        listed = asyncio.create_task(informer.listed())
        await asyncio.sleep(0.01)
        assert not listed.done(), "scope b has not listed yet"
        release.set()
        async with asyncio.timeout(5):
            await listed
        task.cancel()

    asyncio.run(main())


def test_a_server_that_ends_every_watch_at_once_is_not_asked_in_a_tight_loop() -> None:
    class Curt(FakeServer):
        async def watch(
            self, path: str, query: list[tuple[str, str]], read_timeout: float
        ) -> AsyncIterator[Json]:
            self.watches.append(query)
            await asyncio.sleep(0)  # a real request yields to the loop: without the back-off this spins
            for _ in ():
                yield {}

    server = Curt([obj("a", 1)], rv=5)

    async def main() -> None:
        informer = Informer(server, "x", [PATH], form=form, on_event=lambda *_: None, backoffs=(0.05,))
        informer.open()
        task = asyncio.create_task(informer.run())
        await asyncio.sleep(0.3)
        task.cancel()

    asyncio.run(main())
    assert 2 <= len(server.watches) <= 8, f"{len(server.watches)} watches in 0.3 s with a 0.05 s back-off"
