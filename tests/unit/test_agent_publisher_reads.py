"""How the agent's publisher reads its slices: a pass's first list from the API server's watch cache
(resourceVersion 0), and after a refused write a consistent one, so a stale cache costs one refused write and
never a wrong slice. The API is a fake with a cache that lags behind its store."""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from dra_operator.agent.inventory import DeviceInfo, Inventory
from dra_operator.agent.publisher import SlicePublisher
from dra_operator.agent.slices import plan

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
