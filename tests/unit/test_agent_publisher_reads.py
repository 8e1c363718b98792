"""How the agent's publisher reads its slices: a pass's first list from the API server's watch cache
(resourceVersion 0), and after a refused write a consistent one, so a stale cache costs one refused write and
never a wrong slice. The API is a fake with a cache that lags behind its store."""

from __future__ import annotations

import asyncio
import copy
import json
from collections import Counter
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from dra_operator.agent.inventory import DeviceInfo, Inventory
from dra_operator.agent.publisher import SlicePublisher
from dra_operator.agent.slices import node_selector, plan
from dra_operator.agent.sliceview import SliceView

NODE = "node-a"
UID = "uid-a"


def gpus(count: int) -> Inventory:
    return Inventory(
        driver="driver.example.com",
        devices=tuple(
            DeviceInfo(name=f"gpu-{i}", attributes={"type": "gpu"}, capacity={"memory": "64Gi"})
            for i in range(count)
        ),
    )


class FakeNode:
    class metadata:
        uid = UID


class FakeCore:
    async def read_node(self, name: str) -> FakeNode:
        assert name == NODE
        return FakeNode()


class LaggingApi:
    """Slices by name with resourceVersions; `cache` is what a list with resourceVersion 0 answers, and it
    catches up with the store only when told to (`sync_cache`)."""

    def __init__(self) -> None:
        self.store: dict[str, dict[str, Any]] = {}
        self.cache: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.lists: list[str | None] = []  # the resourceVersion each list asked for (None: consistent)
        self.refused = 0

    def sync_cache(self) -> None:
        self.cache = copy.deepcopy(self.store)

    def _stored(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        kept = copy.deepcopy(body)
        kept["metadata"]["resourceVersion"] = str(self.version)
        self.store[kept["metadata"]["name"]] = kept
        return copy.deepcopy(kept)

    async def list_cluster_custom_object(self, *_: Any, label_selector: str, **kwargs: Any) -> dict[str, Any]:
        version = kwargs.get("resource_version")
        self.lists.append(version)
        source = self.cache if version == "0" else self.store
        return {"items": copy.deepcopy(list(source.values()))}

    async def create_cluster_custom_object(self, *args: Any, **__: Any) -> dict[str, Any]:
        body = args[3]
        if body["metadata"]["name"] in self.store:
            self.refused += 1
            raise ApiException(status=409, reason="AlreadyExists")
        return self._stored(body)

    async def replace_cluster_custom_object(self, *args: Any, **__: Any) -> dict[str, Any]:
        name, body = args[3], args[4]
        current = self.store.get(name)
        if current is None:
            self.refused += 1
            raise ApiException(status=404, reason="NotFound")
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            self.refused += 1
            raise ApiException(status=409, reason="Conflict")
        return self._stored(body)

    async def delete_cluster_custom_object(self, *args: Any, **__: Any) -> None:
        if self.store.pop(args[3], None) is None:
            raise ApiException(status=404, reason="NotFound")


def publisher(api: LaggingApi) -> SlicePublisher:
    """A publisher for NODE whose API clients are the fakes (no client library object is made)."""
    made = SlicePublisher.__new__(SlicePublisher)
    made.node = NODE
    made._custom = api  # type: ignore[assignment]
    made._core = FakeCore()  # type: ignore[assignment]
    made.writes = Counter()
    made.view, made._uid = None, None
    return made


def sync(api: LaggingApi, inventory: Inventory) -> list[Any]:
    return asyncio.run(publisher(api).sync([inventory]))


def published(api: LaggingApi) -> list[dict[str, Any]]:
    return list(api.store.values())


@pytest.mark.parametrize(
    ("case", "before", "after", "cache_lags", "lists", "refused"),
    [
        # An unchanged inventory with a fresh cache: one cached list, no write, no consistent read.
        ("unchanged, cache fresh", 4, 4, False, ["0"], 0),
        # Unchanged, and the slice written since the cache caught up (the operator's status view writes
        # it): the cached copy still matches the inventory, so nothing is read or written again.
        ("unchanged, cache stale", 4, 4, True, ["0"], 0),
        # A device more, the cache fresh: the replace lands on the cached resourceVersion.
        ("changed, cache fresh", 4, 5, False, ["0"], 0),
        # A device more while the cache lags one write: the replace is refused once (its resourceVersion
        # is old), and the pass reads consistently and replaces again.
        ("changed, cache stale", 4, 5, True, ["0", None], 1),
        # Nothing published yet: one cached list and the create.
        ("first publish", 0, 2, False, ["0"], 0),
    ],
)
def test_first_list_is_cached_and_a_refusal_reads_consistently(
    case: str, before: int, after: int, cache_lags: bool, lists: list[str | None], refused: int
) -> None:
    api = LaggingApi()
    if before:
        sync(api, gpus(before))
        api.sync_cache()
    if cache_lags:
        # Written again since the cache last caught up: same content, a newer resourceVersion.
        api._stored(next(iter(api.store.values())))
    api.lists.clear()
    sync(api, gpus(after))
    assert api.lists == lists, case
    assert api.refused == refused, case
    # Whatever was read, the store ends as a consistent read's plan wants it: nothing left to do.
    assert plan(NODE, UID, [gpus(after)], published(api)) == [], case
    assert len(api.store) == (1 if after else 0), case


def test_a_stale_cache_never_leaves_a_duplicate_or_a_lost_update() -> None:
    """The inventory changes while the cache lags by one write: the pass's cached read is refused and the
    consistent one finishes the change; one slice, with the new devices."""
    api = LaggingApi()
    sync(api, gpus(2))  # cache still empty: it never caught up with the create
    api.lists.clear()
    sync(api, gpus(3))
    assert api.lists == ["0", None]
    assert api.refused == 1  # the create of a slice the cache did not show yet
    assert len(api.store) == 1
    (only,) = api.store.values()
    assert [d["name"] for d in only["spec"]["devices"]] == ["gpu-0", "gpu-1", "gpu-2"]


# The agent's SliceView: a pass plans against what a label-selected watch delivered.


class CountingCore(FakeCore):
    def __init__(self) -> None:
        self.reads = 0

    async def read_node(self, name: str) -> FakeNode:
        self.reads += 1
        return await super().read_node(name)


def watched(api: LaggingApi) -> tuple[SlicePublisher, CountingCore, list[None]]:
    """A publisher with a SliceView on `api`, listed once (from the cache); the list of `on_change` calls."""
    made, core, changes = publisher(api), CountingCore(), []
    made._core = core  # type: ignore[assignment]
    view = SliceView(api, node_selector(NODE), lambda: changes.append(None))  # type: ignore[arg-type]
    made.view = view
    asyncio.run(view._list())
    return made, core, changes


def test_a_pass_with_a_live_view_reads_nothing_unless_it_writes() -> None:
    api = LaggingApi()
    made, core, _ = watched(api)
    asyncio.run(made.sync([gpus(2)]))  # the first publish: the Node's uid read, the create
    assert (api.lists, core.reads, made.writes["create"]) == (["0"], 1, 1)
    api.lists.clear()
    for _ in range(3):  # unchanged: nothing asked, nothing written
        assert asyncio.run(made.sync([gpus(2)])) == []
    assert (api.lists, core.reads, made.writes.total()) == ([], 1, 1)
    asyncio.run(made.sync([gpus(3)]))  # a device more: the uid read again before the write, no list
    assert (api.lists, core.reads, made.writes["replace"]) == ([], 2, 1)
    assert asyncio.run(made.sync([gpus(3)])) == []  # the view holds the replace's answer
    assert (api.lists, core.reads) == ([], 2)
    assert plan(NODE, UID, [gpus(3)], published(api)) == []


def test_a_write_refused_as_stale_reads_consistently_and_lists_the_view_again() -> None:
    api = LaggingApi()
    made, _, _ = watched(api)
    asyncio.run(made.sync([gpus(2)]))
    api._stored(next(iter(api.store.values())))  # written by someone else; the watch has not told yet
    api.lists.clear()
    asyncio.run(made.sync([gpus(3)]))
    assert (api.lists, api.refused) == ([None], 1)
    assert made.view is not None and made.view.items() is None  # not trusted until listed again
    assert plan(NODE, UID, [gpus(3)], published(api)) == []


def test_without_a_live_view_a_pass_lists_as_before() -> None:
    api = LaggingApi()
    made, core, _ = watched(api)
    assert made.view is not None
    made.view.invalidate()
    api.lists.clear()
    asyncio.run(made.sync([gpus(1)]))
    api.sync_cache()
    asyncio.run(made.sync([gpus(1)]))
    assert api.lists == ["0", "0"] and core.reads == 2


def _slice(name: str, version: str, generation: int = 1, status: int = 0) -> dict[str, Any]:
    meta = {"name": name, "resourceVersion": version, "generation": generation, "labels": {"l": "v"}}
    return {"metadata": meta, "status": {"allocated": status}}


@pytest.mark.parametrize(
    ("case", "events", "names", "changes"),
    [
        ("a slice added by someone", [("ADDED", _slice("b", "7"))], {"a": "5", "b": "7"}, 1),
        ("edited by hand", [("MODIFIED", _slice("a", "8", generation=2))], {"a": "8"}, 1),
        ("unlabelled", [("MODIFIED", {"metadata": {"name": "a", "resourceVersion": "8"}})], {"a": "8"}, 1),
        ("its status written", [("MODIFIED", _slice("a", "8", status=3))], {"a": "8"}, 0),
        ("deleted by hand", [("DELETED", _slice("a", "9"))], {}, 1),
        ("the echo of our own write", [("MODIFIED", _slice("a", "5"))], {"a": "5"}, 0),
        ("a bookmark", [("BOOKMARK", _slice("", "12"))], {"a": "5"}, 0),
        ("deleted twice", [("DELETED", _slice("a", "9")), ("DELETED", _slice("a", "9"))], {}, 1),
    ],
)
def test_watch_events_fold_into_the_view(
    case: str, events: list[tuple[str, dict[str, Any]]], names: dict[str, str], changes: int
) -> None:
    seen: list[None] = []
    view = SliceView(LaggingApi(), "x", lambda: seen.append(None))  # type: ignore[arg-type]
    view._synced = True
    view.record(_slice("a", "5"))
    for kind, item in events:
        assert view.apply({"type": kind, "raw_object": item}) == item["metadata"]["resourceVersion"]
    held = {i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in view.items() or []}
    assert held == names, case
    assert len(seen) == changes, case


class ScriptedResponse:
    """A watch response that gives `lines` and then ends, as the server does at timeoutSeconds."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = [line.encode() + b"\n" for line in lines]
        self.content = self

    async def readline(self) -> bytes:
        return self.lines.pop(0) if self.lines else b""

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class WatchedApi(LaggingApi):
    """Lists as LaggingApi; each watch request answers the next of `streams`, and the last one waits."""

    def __init__(self, streams: list[list[dict[str, Any]]]) -> None:
        super().__init__()
        self.streams = streams
        self.watched_from: list[str] = []
        self.waiting = asyncio.Event()

    async def list_cluster_custom_object(self, *args: Any, label_selector: str, **kwargs: Any) -> Any:
        if not kwargs.get("watch"):
            listed = await super().list_cluster_custom_object(*args, label_selector=label_selector, **kwargs)
            return {"metadata": {"resourceVersion": str(self.version)}, **listed}
        self.watched_from.append(kwargs["resource_version"])
        if not self.streams:
            self.waiting.set()
            await asyncio.Event().wait()  # held open until the test cancels the view
        return ScriptedResponse([json.dumps(event) for event in self.streams.pop(0)])


def test_the_watch_resumes_where_it_ended_and_lists_again_after_410() -> None:
    api = WatchedApi(
        [
            [{"type": "ADDED", "object": {"metadata": {"name": "s", "resourceVersion": "6"}}}],
            [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}],
            [{"type": "ERROR", "object": {"code": 410, "reason": "Expired", "message": "too old"}}],
        ]
    )
    api.version = 5
    seen: list[None] = []

    async def scenario() -> SliceView:
        view = SliceView(api, node_selector(NODE), lambda: seen.append(None))  # type: ignore[arg-type]
        task = asyncio.create_task(view.run())
        await asyncio.wait_for(api.waiting.wait(), timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return view

    view = asyncio.run(scenario())
    # From the list's version; after the ADDED from 6, after the bookmark from 9; the 410 lists again.
    assert api.watched_from == ["5", "6", "9", "5"]
    assert api.lists == ["0", "0"] and view.lists == 2
    assert view.items() == []  # the second list's answer: the store never held "s"
    assert len(seen) == 2  # "s" added, then gone by the second list
