"""The operator's client rate limit: a token bucket that lets a burst through and then paces at its rate, in
the order requests came; every request of the client waits on it, and the leadership fence is asked after."""

from __future__ import annotations

import argparse
import asyncio

import pytest
from aiohttp import web
from kubernetes_asyncio import client as k8s

from dra_operator.kube.client import Kube, NotLeading
from dra_operator.kube.ratelimit import TokenBucket
from dra_operator.operator import main as operator_main


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# (qps, burst, [(time of the request, how long it must wait)])
CASES = {
    "a burst at once, then one each 1/qps": (10.0, 2, [(0, 0), (0, 0), (0, 0.1), (0, 0.2), (0, 0.3)]),
    "tokens come back with time": (10.0, 2, [(0, 0), (0, 0), (0, 0.1), (0.3, 0), (0.3, 0), (0.3, 0.1)]),
    "no more than burst is saved up": (1.0, 1, [(0, 0), (10, 0), (10, 1.0), (10, 2.0)]),
    "waiters promised tokens are paid first": (2.0, 1, [(0, 0), (0, 0.5), (0.25, 0.75), (1.0, 0.5)]),
    "qps 0 limits nothing": (0.0, 0, [(0, 0)] * 50),
    "a negative qps limits nothing": (-1.0, 0, [(0, 0)] * 50),
}


@pytest.mark.parametrize("qps,burst,steps", CASES.values(), ids=CASES.keys())
def test_reservations_wait_as_the_bucket_says(
    qps: float, burst: int, steps: list[tuple[float, float]]
) -> None:
    clock = Clock()
    bucket = TokenBucket(qps, burst, clock=clock)
    waits = []
    for at, _ in steps:
        clock.now = at
        waits.append(round(bucket.reserve(), 9))
    assert waits == [wait for _, wait in steps]


def test_a_rate_limit_needs_a_burst_of_at_least_one() -> None:
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(5.0, 0)
    assert not TokenBucket(0.0, 0).limited


def test_a_returned_token_serves_the_next_request() -> None:
    clock = Clock()
    bucket = TokenBucket(1.0, 1, clock=clock)
    assert bucket.reserve() == 0
    assert bucket.reserve() == 1.0
    bucket.give_back()
    assert bucket.reserve() == 1.0  # not 2.0: the abandoned reservation no longer counts


def test_a_cancelled_waiter_gives_its_token_back_and_waits_are_reported() -> None:
    waited: list[float] = []

    async def scenario() -> float:
        clock = Clock()
        bucket = TokenBucket(1.0, 1, on_wait=waited.append, clock=clock)
        await bucket.wait()  # the burst's token: no wait
        waiter = asyncio.create_task(bucket.wait())
        await asyncio.sleep(0)  # it reserved the next token and sleeps a second for it
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return bucket.reserve()

    assert asyncio.run(scenario()) == 1.0
    assert waited == [1.0]


class Recording(TokenBucket):
    """A bucket that lets everything through at once and records that it was asked (and can run a step on
    each wait, standing for what happens meanwhile)."""

    def __init__(self) -> None:
        super().__init__(0.0, 0)
        self.asked = 0
        self.meanwhile = lambda: None

    async def wait(self) -> None:
        self.asked += 1
        self.meanwhile()


async def served(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def test_every_request_waits_on_the_limiter_watches_too() -> None:
    path = "/api/v1/namespaces/default/configmaps"

    async def get(request: web.Request) -> web.Response:
        if request.query.get("watch") == "true":
            return web.Response(text='{"type": "ADDED", "object": {"metadata": {"name": "a"}}}\n')
        return web.json_response({"items": []})

    async def post(request: web.Request) -> web.Response:
        return web.json_response(await request.json(), status=201)

    async def scenario() -> int:
        app = web.Application()
        app.router.add_get(path, get)
        app.router.add_post(path, post)
        runner, host = await served(app)
        api = k8s.ApiClient(k8s.Configuration(host=host))
        limiter = Recording()
        try:
            kube = Kube(api, limiter=limiter)
            await kube.get(path)
            await kube.create(path, {"metadata": {"name": "a"}})
            events = [event async for event in kube.watch(path, [], read_timeout=5)]
            assert [e["type"] for e in events] == ["ADDED"]
        finally:
            await api.close()
            await runner.cleanup()
        return limiter.asked

    assert asyncio.run(scenario()) == 3


def test_the_leadership_fence_is_asked_after_the_wait() -> None:
    """A leader may lose its Lease while its write waits for a token: that write must not go out."""
    path = "/api/v1/namespaces/default/configmaps"
    received: list[str] = []

    async def post(request: web.Request) -> web.Response:
        received.append(request.method)
        return web.json_response({}, status=201)

    async def scenario() -> None:
        app = web.Application()
        app.router.add_post(path, post)
        runner, host = await served(app)
        api = k8s.ApiClient(k8s.Configuration(host=host))
        leading = {"now": True}
        limiter = Recording()
        limiter.meanwhile = lambda: leading.update(now=False)
        try:
            kube = Kube(api, may_write=lambda _: leading["now"], limiter=limiter)
            with pytest.raises(NotLeading):
                await kube.create(path, {"metadata": {"name": "a"}})
        finally:
            await api.close()
            await runner.cleanup()

    asyncio.run(scenario())
    assert received == []


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    operator_main.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    "argv,qps,burst",
    [
        ((), operator_main.KUBE_API_QPS, int(2 * operator_main.KUBE_API_QPS)),
        (("--kube-api-qps=30",), 30.0, 60),
        (("--kube-api-qps=30", "--kube-api-burst=5"), 30.0, 5),
        (("--kube-api-qps=0.2",), 0.2, 1),
    ],
)
def test_the_flags_set_the_bucket(argv: tuple[str, ...], qps: float, burst: int) -> None:
    bucket = operator_main.rate_limit(parsed(*argv))
    assert (bucket.qps, bucket.burst, bucket.limited) == (qps, burst, True)


def test_qps_0_turns_the_limit_off() -> None:
    assert not operator_main.rate_limit(parsed("--kube-api-qps=0")).limited


def test_a_burst_below_one_with_a_limit_is_refused_at_start(capsys: pytest.CaptureFixture[str]) -> None:
    assert operator_main.main(parsed("--kube-api-qps=10", "--kube-api-burst=0", "--no-leader-election")) == 2
    assert "--kube-api-burst 0" in capsys.readouterr().err
