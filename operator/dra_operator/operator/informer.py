"""List and watch of one kind into a cache of slim objects: ours for the kinds counted in thousands (Nodes,
ResourceSlices, ResourceClaims, Pods), where Kopf's per-object machinery was most of the operator's memory.

Kopf gives every watched object a worker and per-object memories, and at start-up parks each listed object's
worker with its raw event until every index has its first listing. At 2,000 nodes and 4,000 claims that was
990,000 Python objects at the peak against 283,000 once the parked handlers had run, and pymalloc kept the
peak's arenas (issue 14). An informer holds one slim copy per object and nothing else: the list comes in
pages, each page's raw objects are dropped once their slim copies are kept, and a watch event costs one parse.

The cache has the shape of a Kopf index (key -> the objects at that key), so `State` reads both alike. Events
are handed to `on_event(type, obj, old)` in the order the API server sent them, `old` being what the cache
held before: None as `type` for an object listed (at start, or after the watch expired and the kind was
listed again), ADDED, MODIFIED or DELETED from the watch. No handler runs before `open()` (the operator's
caches are complete then, as Kopf's parked handlers waited for). A relist hands over only what changed, and
what vanished meanwhile as DELETED: Kopf's relist never noticed those.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import structlog

from dra_operator.kube.rest import KubeError
from dra_operator.operator.state import Key, key_of

log = structlog.get_logger("dra_operator.informer")

Json = dict[str, Any]
#: What the cache keeps of a raw object (its slim form).
Form = Callable[[Json], Json]
#: (type, the object as kept, what the cache held before): see the module's docstring.
OnEvent = Callable[[str | None, Json, Json | None], None]

#: Objects per list page: a page's raw JSON is the transient cost of a listing.
PAGE = 500
#: The API server ends a watch after about this many seconds (it adds jitter); we then watch again.
SERVER_TIMEOUT = 300
#: Seconds between watch retries after a failure: doubling up to the last.
BACKOFFS = (0.5, 1.0, 2.0, 4.0, 5.0)
#: A watch the server ends sooner than this counts as a failure (backed off), not as a normal end.
MIN_WATCH_SECONDS = 1.0


class Watcher(Protocol):
    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = ...,
        query: list[tuple[str, str]] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the client's own
    ) -> Json: ...

    def watch(self, path: str, query: list[tuple[str, str]], read_timeout: float) -> AsyncIterator[Json]: ...


class Expired(Exception):
    """The watch's resourceVersion is older than the API server keeps (410 Gone): list again."""


def _rv(obj: Json) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Informer:
    """One kind, listed and watched at each of `paths` (one per namespace watched, or the whole cluster)."""

    def __init__(
        self,
        kube: Watcher,
        name: str,
        paths: Sequence[str],
        *,
        form: Form,
        on_event: OnEvent,
        label_selector: str | None = None,
        page: int = PAGE,
        server_timeout: int = SERVER_TIMEOUT,
        backoffs: Sequence[float] = BACKOFFS,
    ) -> None:
        self.kube, self.name, self.paths = kube, name, tuple(paths)
        self.form, self.on_event = form, on_event
        self.selector = [("labelSelector", label_selector)] if label_selector else []
        self.page, self.server_timeout, self.backoffs = page, server_timeout, tuple(backoffs)
        #: The cache, shaped as a Kopf index: key -> [object].
        self.store: dict[Key, list[Json]] = {}
        self._keys: dict[str, set[Key]] = {path: set() for path in self.paths}  # per scope, for relists
        self._listed: dict[str, asyncio.Event] = {path: asyncio.Event() for path in self.paths}
        self._open = asyncio.Event()
        self.relists = 0

    async def listed(self) -> None:
        """Return once every scope has had its first listing (the cache is complete)."""
        for event in self._listed.values():
            await event.wait()

    def open(self) -> None:
        """Let events through to `on_event`: the listings held until now first."""
        self._open.set()

    async def run(self) -> None:
        """List and watch every scope until cancelled."""
        await asyncio.gather(*(self._follow(path) for path in self.paths))

    async def _follow(self, path: str) -> None:
        rv: str | None = None
        failures = 0
        while True:
            try:
                if rv is None:
                    rv, changes = await self._list(path)
                    self._listed[path].set()
                    await self._open.wait()
                    for change in changes:
                        self._hand(*change)
                started = time.monotonic()
                rv = await self._watch(path, rv)
                if time.monotonic() - started > MIN_WATCH_SECONDS:
                    failures = 0
                else:  # a server that ends every watch at once must not be asked again in a tight loop
                    await asyncio.sleep(self.backoffs[min(failures, len(self.backoffs) - 1)])
                    failures += 1
            except Expired:
                log.info("watch expired: listing again", kind=self.name, path=path)
                self.relists += 1
                rv = None
            except KubeError as exc:
                delay = self.backoffs[min(failures, len(self.backoffs) - 1)]
                failures += 1
                if exc.status == 410:
                    # The watch request refused as too old, or a list's continue token expired: list afresh.
                    self.relists += 1
                    rv = None
                log.warning("watch failed", kind=self.name, path=path, error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)

    async def _list(self, path: str) -> tuple[str, list[tuple[str | None, Json, Json | None]]]:
        """List `path` page by page into the cache; the changes to hand over (new or changed objects as
        listed, vanished ones as DELETED) and the list's resourceVersion to watch from."""
        listed: dict[Key, Json] = {}
        token = ""
        while True:
            query = [*self.selector, ("limit", str(self.page))] + ([("continue", token)] if token else [])
            listing = await self.kube.request("GET", path, query=query)
            for raw in listing.get("items") or []:
                listed[key_of(raw)] = self.form(raw)
            meta = listing.get("metadata") or {}
            token = str(meta.get("continue") or "")
            if not token:
                break
        # The cache changes only once the whole list is in: a list that fails half-way changes nothing.
        changes: list[tuple[str | None, Json, Json | None]] = []
        for key, kept in listed.items():
            old = self._current(key)
            if old != kept:
                self.store[key] = [kept]
                changes.append((None, kept, old))
        rv = str(meta.get("resourceVersion") or "")
        for key in self._keys[path] - listed.keys():
            gone = self.store.pop(key, None)
            if gone:
                # Gone as of the list's resourceVersion (its last version is older), as a DELETED event says.
                last = {**gone[0], "metadata": {**(gone[0].get("metadata") or {}), "resourceVersion": rv}}
                changes.append(("DELETED", last, gone[0]))
        self._keys[path] = set(listed)
        return rv, changes

    async def _watch(self, path: str, rv: str) -> str:
        """Watch `path` from `rv` until the server ends the stream; the resourceVersion reached."""
        query = [
            *self.selector,
            ("resourceVersion", rv),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(self.server_timeout + random.randint(0, 30))),  # jitter: watches end apart
        ]
        async for event in self.kube.watch(path, query, read_timeout=self.server_timeout + 60):
            kind, raw = event.get("type"), event.get("object")
            if not isinstance(raw, dict):
                continue
            if kind == "ERROR":
                if raw.get("code") == 410:
                    raise Expired
                code, reason = int(raw.get("code") or 0), str(raw.get("reason"))
                raise KubeError(code, reason, raw, method="WATCH", path=path)
            rv = _rv(raw) or rv
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self.apply(str(kind), raw, path)
        return rv

    def apply(self, kind: str | None, raw: Json, path: str | None = None) -> None:
        """One event of the scope `path` (default the first): the cache takes it in, then its handler gets it
        with what the cache held before. `kind` None: an object as listed."""
        key, keys = key_of(raw), self._keys[path or self.paths[0]]
        old = self._current(key)
        kept = self.form(raw)
        if kind == "DELETED":
            self.store.pop(key, None)
            keys.discard(key)
        else:
            self.store[key] = [kept]
            keys.add(key)
        self._hand(kind, kept, old)

    def _current(self, key: Key) -> Json | None:
        held = self.store.get(key)
        return held[0] if held else None

    def _hand(self, kind: str | None, obj: Json, old: Json | None) -> None:
        try:
            self.on_event(kind, obj, old)
        except Exception:  # a handler's bug must not end the watch: the next event is handed over regardless
            log.exception("event handler failed", kind=self.name, type=kind, object=key_of(obj))
