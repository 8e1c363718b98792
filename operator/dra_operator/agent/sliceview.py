"""The agent's own ResourceSlices as the API server last told it, kept current by one label-selected watch.

With the view live, a publishing pass that has nothing to change asks the API server nothing: it plans
against what the watch delivered. Without it every pass listed the node's slices, and at 5,000 nodes the
agents' passes alone kept most of one kube-apiserver core busy at rest (bench/agent_sync.py). The watch also
brings a change someone else made (a slice deleted or edited by hand, the garbage collector's delete after the
Node was recreated) as it happens: `on_change` wakes the agent, which repairs it at once instead of an
interval later.

Informer-shaped: list (from the watch cache), then watch from the list's resourceVersion with bookmarks; a
watch that ends resumes from the last resourceVersion seen, and one the server no longer can resume (410
Gone) starts over with a list. While it is not caught up (`items()` is None), the publisher lists as before.
The publisher's own writes are recorded with their answers (`record`, `forget`), so the pass right after a
write does not plan against the version it replaced, and the watch's echo of the write wakes nobody; nor
does a write of a slice's status (the operator's device counts), which no pass plans on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from dra_operator.api.group import GROUP, VERSION

PLURAL = "resourceslices"
#: The server ends each watch after this long (it would after its own --min-request-timeout anyway); the
#: next one resumes from the last resourceVersion, so nothing is lost in between.
WATCH_SECONDS = 300
#: A client-side bound past the server's, for a connection that went silent without closing.
READ_SLACK = 30
#: Seconds before listing again after a failure, doubling up to MAX_BACKOFF.
MAX_BACKOFF = 60.0

log = structlog.get_logger("dra_operator.agent.sliceview")

Json = dict[str, Any]


def _shape(item: Json) -> tuple[object, ...]:
    """What a publishing pass plans on: the spec (by its generation) and the metadata it writes. A status
    write (the operator counts the devices in use there) leaves it alone, and wakes nobody."""
    meta = item.get("metadata") or {}
    return tuple(meta.get(k) for k in ("generation", "labels", "ownerReferences", "deletionTimestamp"))


def _version(item: Json) -> str | None:
    meta = item.get("metadata") or {}
    version = meta.get("resourceVersion")
    return str(version) if version is not None else None


class SliceView:
    """This node's slices by name (`items()`), from a list and a watch with `label_selector`."""

    def __init__(
        self, custom: client.CustomObjectsApi, label_selector: str, on_change: Callable[[], None]
    ) -> None:
        self._custom = custom
        self.label_selector = label_selector
        self.on_change = on_change
        self._slices: dict[str, Json] = {}
        self._synced = False
        self._watcher: watch.Watch | None = None
        self._cut = False  # set by `invalidate`: the watch ends and the view lists again
        self.lists = 0  # lists made (the first, and after each failure or 410)
        self.watches = 0  # watch requests made (each resumes where the last one ended)

    def items(self) -> list[Json] | None:
        """The slices, or None while the view is not caught up (no list yet, or after a failure)."""
        return list(self._slices.values()) if self._synced else None

    def record(self, item: Json) -> None:
        """The publisher wrote `item` (the server's answer): plan against it from now on."""
        self._slices[str(item["metadata"]["name"])] = item

    def forget(self, name: str) -> None:
        """The publisher deleted `name`."""
        self._slices.pop(name, None)

    def invalidate(self) -> None:
        """Something showed the view wrong (a write refused as stale): list before it is trusted again. The
        open watch is cut, so the list comes now rather than at its next event."""
        self._synced, self._cut = False, True
        response = self._watcher.resp if self._watcher is not None else None
        if response is not None:
            response.close()

    async def run(self) -> None:
        """Until cancelled: list, then watch; after a failure, list again (backing off)."""
        failures = 0
        while True:
            try:
                self._cut = False
                version = await self._list()
                failures = 0
                await self._watch(version)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if self._cut:  # by `invalidate`: list again now
                    self._cut = False
                    continue
                self._synced = False
                failures += 1
                backoff = min(MAX_BACKOFF, 2.0 ** (failures - 1))
                what = f"{type(error).__name__}: {error}"
                if isinstance(error, ApiException) and error.status == 410:  # the server's "list again"
                    log.info("slice watch expired; listing again", error=what)
                    continue
                log.warning("slice watch interrupted; listing again", error=what, retry_in=backoff)
                await asyncio.sleep(backoff)

    async def _list(self) -> str:
        listed = await self._custom.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, label_selector=self.label_selector, resource_version="0"
        )
        self.lists += 1
        fresh = {str(item["metadata"]["name"]): item for item in listed.get("items") or []}
        changed = self._differs(fresh)
        self._slices, self._synced = fresh, True
        if changed:
            self.on_change()
        return str((listed.get("metadata") or {}).get("resourceVersion") or "0")

    def _differs(self, fresh: dict[str, Json]) -> bool:
        if fresh.keys() != self._slices.keys():
            return True
        return any(_shape(item) != _shape(self._slices[name]) for name, item in fresh.items())

    async def _watch(self, version: str) -> None:
        """Apply events until the watch fails; each ended stream resumes from the last version seen."""
        while not self._cut:
            self._watcher = watcher = watch.Watch()
            self.watches += 1
            try:
                stream = watcher.stream(
                    self._custom.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    PLURAL,
                    label_selector=self.label_selector,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_SECONDS,
                    _request_timeout=WATCH_SECONDS + READ_SLACK,
                )
                async for event in stream:
                    version = self.apply(event) or version
                    if self._cut:
                        return
            finally:
                self._watcher = None
                with contextlib.suppress(Exception):
                    await watcher.close()

    def apply(self, event: Json) -> str | None:
        """Fold one watch event into the view; returns its resourceVersion (None if it carried none)."""
        kind = str(event.get("type") or "")
        item = event.get("raw_object") or event.get("object")
        if not isinstance(item, dict):
            return None
        version = _version(item)
        if kind == "BOOKMARK":
            return version
        name = str((item.get("metadata") or {}).get("name"))
        known = self._slices.get(name)
        if kind == "DELETED":
            if self._slices.pop(name, None) is not None:
                self.on_change()
        elif kind in ("ADDED", "MODIFIED"):
            self._slices[name] = item
            if known is None or (_version(known) != version and _shape(known) != _shape(item)):
                self.on_change()  # neither the echo of our own write nor a status write
        return version
