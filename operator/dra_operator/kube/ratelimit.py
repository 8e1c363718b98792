"""The operator's client-side rate limit: a token bucket every API request waits on, as Kubernetes' own
controllers have (`--kube-api-qps`, `--kube-api-burst`).

Why the operator paces itself: unpaced, its placement writes in a burst of Pod creates saturate a small
control plane's kube-apiserver, and every other client of it waits, the Pod creates themselves included (on
two cores, the admission webhook's median latency as the apiserver measures it was 10.7 ms unpaced and 3.0 ms
at 100 requests a second; bench/README.md). A bucket refills at `qps` tokens a second up to `burst`, so a
short burst goes out at once and a long one at `qps`.

Each request reserves its token when it asks, so waiters go in the order they came, with no lock and no
wake-up storm: the asyncio loop is the only thread that touches a bucket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """`qps` tokens a second, at most `burst` kept; `qps <= 0` limits nothing."""

    def __init__(
        self,
        qps: float,
        burst: int,
        *,
        on_wait: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if qps > 0 and burst < 1:
            raise ValueError(f"burst must be at least 1 with a rate limit, got {burst}")
        self.qps, self.burst, self.clock = qps, burst, clock
        self.on_wait = on_wait  # told each wait's length (a metric's source)
        self._tokens = float(burst)  # may go below 0: tokens already promised to waiters
        self._at = clock()

    @property
    def limited(self) -> bool:
        return self.qps > 0

    def reserve(self) -> float:
        """Take a token now or promise the next one; returns how long the caller must wait for it."""
        if not self.limited:
            return 0.0
        now = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.qps)
        self._at = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def give_back(self) -> None:
        """Return a reserved token that will not be used (its waiter was cancelled)."""
        if self.limited:
            self._tokens = min(float(self.burst), self._tokens + 1.0)

    async def wait(self) -> None:
        delay = self.reserve()
        if delay <= 0:
            return
        if self.on_wait is not None:
            self.on_wait(delay)
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.give_back()
            raise
