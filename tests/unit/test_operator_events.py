"""Events: posted in the background a few at a time, the same message for the same object and reason only
once."""

from __future__ import annotations

import asyncio
from typing import Any

from dra_operator.operator.events import COMPONENT, Recorder

Json = dict[str, Any]


class Poster:
    def __init__(self) -> None:
        self.posted: list[tuple[str, Json]] = []

    async def create(self, path: str, body: Json) -> Json:
        self.posted.append((path, body))
        return body


POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns", "uid": "u1"}}


async def drained(recorder: Recorder) -> None:
    """Until the recorder has posted everything queued (the fake poster never blocks)."""
    async with asyncio.timeout(5):
        while recorder.queue.qsize():  # noqa: ASYNC110 - nothing to wait on but the recorder's task
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)


def test_repeats_are_dropped_until_forgotten() -> None:
    async def scenario() -> list[tuple[str, Json]]:
        poster = Poster()
        recorder = Recorder(poster, host="h")  # type: ignore[arg-type]
        recorder.start()
        recorder.warning(POD, "AllocationFailed", "no node")
        recorder.warning(POD, "AllocationFailed", "no node")  # same: dropped
        recorder.warning(POD, "AllocationFailed", "still no node")  # changed: posted
        recorder.normal(POD, "Allocated", "on n1")
        recorder.forget("u1")
        recorder.normal(POD, "Allocated", "on n1")  # forgotten: posted again
        await drained(recorder)
        await recorder.stop()
        return poster.posted

    posted = asyncio.run(scenario())
    assert [(b["reason"], b["message"]) for _, b in posted] == [
        ("AllocationFailed", "no node"),
        ("AllocationFailed", "still no node"),
        ("Allocated", "on n1"),
        ("Allocated", "on n1"),
    ]
    path, event = posted[0]
    assert path == "/api/v1/namespaces/ns/events"
    assert event["type"] == "Warning" and event["source"]["component"] == COMPONENT
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "p",
        "namespace": "ns",
        "uid": "u1",
        "resourceVersion": None,
    }


def test_a_full_queue_drops_new_events_and_counts_them() -> None:
    """Events are best effort: past the bound a new event is dropped (and counted), not queued without end;
    a dropped message is not remembered as posted, so it is posted when it comes again."""
    dropped: list[str] = []

    async def scenario() -> list[tuple[str, Json]]:
        poster = Poster()
        recorder = Recorder(poster, host="h", max_queued=2, on_dropped=dropped.append)  # type: ignore[arg-type]
        pods = [{**POD, "metadata": {**POD["metadata"], "uid": f"u{i}"}} for i in range(4)]
        recorder.normal(pods[0], "Allocated", "on n1")
        recorder.normal(pods[1], "Allocated", "on n1")
        recorder.warning(pods[2], "AllocationFailed", "no node")  # the queue is full: dropped
        recorder.start()
        await drained(recorder)
        recorder.warning(pods[2], "AllocationFailed", "no node")  # room again: posted this time
        await drained(recorder)
        await recorder.stop()
        return poster.posted

    posted = asyncio.run(scenario())
    assert [(b["involvedObject"]["uid"], b["reason"]) for _, b in posted] == [
        ("u0", "Allocated"),
        ("u1", "Allocated"),
        ("u2", "AllocationFailed"),
    ]
    assert dropped == ["Warning"]


class SlowPoster:
    """A poster whose every create waits until `release` is set, counting the creates in flight."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0
        self.posted: list[str] = []

    async def create(self, path: str, body: Json) -> Json:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await self.release.wait()
        self.in_flight -= 1
        self.posted.append(body["involvedObject"]["uid"])
        return body


def test_posters_at_a_time_and_no_more() -> None:
    """While the API server is slow, `posters` events are in flight at once and the rest wait in the queue;
    all are posted once it answers."""

    async def scenario() -> SlowPoster:
        poster = SlowPoster()
        recorder = Recorder(poster, host="h", posters=3)  # type: ignore[arg-type]
        recorder.start()
        for index in range(7):
            pod = {**POD, "metadata": {**POD["metadata"], "uid": f"u{index}"}}
            recorder.normal(pod, "Allocated", "on n1")
        async with asyncio.timeout(5):
            while poster.in_flight < 3:  # noqa: ASYNC110 - the posters take their events in the background
                await asyncio.sleep(0.01)
            for _ in range(10):  # give a fourth poster, if there were one, the chance to start
                await asyncio.sleep(0)
            assert poster.in_flight == 3 and recorder.queue.qsize() == 4
            poster.release.set()
            while len(poster.posted) < 7:  # noqa: ASYNC110 - as above
                await asyncio.sleep(0.01)
        await recorder.stop()
        return poster

    poster = asyncio.run(scenario())
    assert poster.most_in_flight == 3
    assert sorted(poster.posted) == [f"u{index}" for index in range(7)]
