"""Kubernetes Events on Pods and claims, posted in the background; a repeated message only once.

The queue is bounded, as client-go's event broadcaster's is: events are best effort, and a backlog that
outgrows what the API server (or the client's rate limit) takes would otherwise grow without end. Past the
bound a new event is dropped and counted (`dra_operator_events_dropped_total`).

A few posts are in flight at once (`POSTERS`): one at a time, a burst with limits lifted and the machine
loaded (8 clients, a CPU hog, about 40 Pods/s) outran the posts, each answered in tens of milliseconds there,
and 29 % of the Pods' Allocated events were dropped. Each event carries the time it was recorded, which is the
order `kubectl describe` shows."""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Mapping
from typing import Any

from dra_operator.kube.client import Kube, KubeError, path_of

COMPONENT = "dra-operator"
MAX_QUEUED = 1000  # client-go's broadcaster holds as many
POSTERS = 4  # posts in flight at once
log = logging.getLogger(__name__)


class Recorder:
    """Queues events and posts them, `posters` at a time; the last message per (object uid, reason) is not
    repeated."""

    def __init__(
        self,
        kube: Kube,
        host: str = "",
        max_queued: int = MAX_QUEUED,
        on_dropped: Callable[[str], None] | None = None,
        posters: int = POSTERS,
    ) -> None:
        self.kube = kube
        self.host = host
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(max_queued)
        self.on_dropped = on_dropped  # told the type of each event dropped for a full queue
        self._last: dict[str, dict[str, str]] = {}  # object uid -> reason -> last message posted
        self.posters = posters
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"event-recorder-{index}") for index in range(self.posters)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    def forget(self, uid: str) -> None:
        self._last.pop(uid, None)

    def record(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        last = self._last.setdefault(uid, {})
        posted = last.get(reason)
        if posted == message:
            return
        last[reason] = message
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        namespace = meta.get("namespace") or "default"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": uid,
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT, "host": self.host},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.host or COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.queue.put_nowait((namespace, event))
        except asyncio.QueueFull:
            # Not posted: the same message may come again, and the one posted before stays the last.
            if posted is None:
                del last[reason]
            else:
                last[reason] = posted
            if self.on_dropped is not None:
                self.on_dropped(type_)

    def normal(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        self.record(obj, "Normal", reason, message)

    def warning(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        self.record(obj, "Warning", reason, message)

    async def _run(self) -> None:
        while True:
            namespace, event = await self.queue.get()
            try:
                await self.kube.create(path_of("events", namespace=namespace), event)
            except KubeError as exc:  # events are best effort; never stop the operator for them
                log.warning("event not posted: %s", exc)
            except Exception:
                log.exception("event not posted")
