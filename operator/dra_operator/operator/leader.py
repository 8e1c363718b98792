"""Leader election with a coordination.k8s.io/v1 Lease: one replica writes, every replica watches and indexes.

As client-go does it: a candidate takes the Lease when it is free or when its record has not changed for
leaseDurationSeconds as observed on the candidate's own clock (no clock comparison between replicas). The
holder renews every `retry` seconds and counts itself the leader only until `renew_deadline` seconds after
the start of its last successful renewal, on its own monotonic clock. `leading` is computed from that clock
when it is read, not set by the renew loop, so a process that was paused (SIGSTOP, a long GC, a starved CPU)
sees at once on waking that it no longer leads — before the loop had a chance to run — and withholds its
writes.

Why the deadline is safe: a renewal starts at t0 (our clock) and lands in the Lease at some t1 >= t0; any
candidate first sees that record at t2 >= t1 and may take over only after t2 + leaseDuration. We stop at
t0 + renew_deadline < t2 + leaseDuration because renew_deadline < leaseDuration, with the difference as the
margin for clock-rate drift and the candidate's own delays.

A holder that loses the Lease stands down (stops writing, campaigns again); it does not exit, so an API server
restart longer than the deadline costs a hand-over, not a crash loop.

The operator runs its elector on a thread and event loop of its own (ElectionThread): renewals must not wait
behind the main loop's work. Measured (bench/scale_memory.py, 5,000 Nodes and slices and 10,000 claims): while
Kopf delivered the start-up listings, one turn of the main loop took longer than the 10 s renew deadline, and
the leader lapsed seconds after it had started.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dra_operator.kube.client import Kube, KubeError, path_of

log = logging.getLogger(__name__)

#: The shortest lease accepted: its renew deadline (2/3) must leave room for a few renewal attempts, each a
#: GET and a PUT that may take a second on a loaded API server.
MIN_LEASE_SECONDS = 3
#: renewDeadline / leaseDuration and retryPeriod / renewDeadline: client-go's defaults (15 s, 10 s, 2 s).
RENEW_FRACTION = 2 / 3
RETRY_FRACTION = 1 / 5


class LeaseTooShort(ValueError):
    """The lease duration leaves no safe renew deadline."""


def timings(lease_seconds: float) -> tuple[float, float]:
    """(renew_deadline, retry) for a lease of `lease_seconds`: 15 -> (10, 2) (client-go), 5 -> (3.3, 0.67)."""
    if lease_seconds < MIN_LEASE_SECONDS:
        raise LeaseTooShort(
            f"a lease of {lease_seconds:g}s is too short to renew safely: the leader must stop within 2/3 "
            f"of it and renew several times before; use at least {MIN_LEASE_SECONDS}s (client-go uses 15s)"
        )
    renew_deadline = lease_seconds * RENEW_FRACTION
    return renew_deadline, renew_deadline * RETRY_FRACTION


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: int = 15,
        renew_deadline: float | None = None,
        retry: float | None = None,
        on_started: Callable[[], object] = lambda: None,
        on_stopped: Callable[[], object] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        derived_deadline, derived_retry = (
            timings(lease_seconds) if renew_deadline is None or retry is None else (renew_deadline, retry)
        )
        renew_deadline = derived_deadline if renew_deadline is None else renew_deadline
        retry = derived_retry if retry is None else retry
        if not 0 < retry < renew_deadline < lease_seconds:
            raise LeaseTooShort(
                f"need 0 < retry ({retry:g}s) < renew deadline ({renew_deadline:g}s) "
                f"< lease ({lease_seconds}s)"
            )
        self.kube = kube
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds, self.renew_deadline, self.retry = lease_seconds, renew_deadline, retry
        self.on_started, self.on_stopped = on_started, on_stopped
        self._clock = clock
        self._valid_until: float | None = (
            None  # our clock: the end of the leadership the last renewal gave us
        )
        self._announced = False  # on_started was called and on_stopped not yet
        self._observed: tuple[Any, float] = (None, 0.0)  # (record, monotonic time it was first seen)

    @property
    def leading(self) -> bool:
        """Whether this replica may act as the leader right now (see the module docstring)."""
        return self._valid_until is not None and self._clock() < self._valid_until

    @property
    def _path(self) -> str:
        return path_of("leases", group="coordination.k8s.io", namespace=self.namespace, name=self.name)

    def _spec(self, transitions: int, acquired: str | None = None) -> dict[str, Any]:
        now = _now()
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "acquireTime": acquired or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def _try(self) -> bool:
        """One acquire-or-renew attempt; True when we hold the Lease afterwards."""
        lease = await self.kube.get(self._path)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(0),
            }
            await self.kube.create(
                path_of("leases", group="coordination.k8s.io", namespace=self.namespace), body
            )
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        record = (holder, spec.get("renewTime"), spec.get("acquireTime"))
        if record != self._observed[0]:
            self._observed = (record, self._clock())
        duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
        expired = self._clock() - self._observed[1] > duration
        if holder and holder != self.identity and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        acquired = spec.get("acquireTime") if holder == self.identity else None
        lease["spec"] = self._spec(transitions, acquired)
        updated = await self.kube.replace(self._path, lease)
        spec = updated.get("spec") or {}
        self._observed = (
            (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("acquireTime")),
            self._clock(),
        )
        return True

    async def run(self) -> None:
        """Campaign, lead while renewals succeed, stand down when the deadline passes, campaign again."""
        while True:
            started = self._clock()
            try:
                # A renewal that hangs must not hold the loop past the deadline it is racing.
                async with asyncio.timeout(self.renew_deadline):
                    held = await self._try()
            except KubeError as exc:
                log.info("lease attempt failed: %s", exc)
                held = False
            except TimeoutError:
                log.info("lease attempt timed out after %.1fs", self.renew_deadline)
                held = False
            # Read before this attempt counts: a renewal that lands after the deadline (a starved or paused
            # process) still ends the term, since writes were withheld and items dropped meanwhile. Standing
            # down and starting again gives the next term its full start (every item looked at again).
            lapsed = self._announced and not self.leading
            if held:
                self._valid_until = started + self.renew_deadline
            if self._announced and (lapsed or not self.leading):
                self._announced = False
                log.warning(
                    "lost the lease %s/%s (not renewed within %.1fs): standing down",
                    self.namespace,
                    self.name,
                    self.renew_deadline,
                )
                self.on_stopped()
            if held and self.leading and not self._announced:
                self._announced = True
                log.info("became leader (lease %s/%s, identity %s)", self.namespace, self.name, self.identity)
                self.on_started()
            await asyncio.sleep(self.retry)

    async def release(self) -> None:
        """On a graceful stop: hand the Lease over at once (empty holder) instead of letting it expire."""
        if not self.leading:
            return
        self._valid_until = None
        self._announced = False
        try:
            lease = await self.kube.get(self._path)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = None
                lease["spec"]["leaseDurationSeconds"] = 1
                await self.kube.replace(self._path, lease)
        except KubeError as exc:
            log.info("lease not released: %s", exc)


class ElectionThread:
    """Runs a LeaseElector on a daemon thread with an event loop of its own, so that renewals keep their
    deadline however busy the caller's loop is. `make` is called on that loop and returns the elector and an
    awaitable closer of what it opened (its API client, bound to that loop); the elector's callbacks are the
    caller's to relay (loop.call_soon_threadsafe). `leading` may be read from any thread."""

    def __init__(self, make: Callable[[], tuple[LeaseElector, Callable[[], Awaitable[None]]]]) -> None:
        self._make = make
        self._elector: LeaseElector | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="leader-election", daemon=True)

    @property
    def leading(self) -> bool:
        return self._elector is not None and self._elector.leading

    def start(self) -> None:
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            raise self._failure

    async def stop(self) -> None:
        """Release the Lease (a graceful hand-over) and end the thread; awaited from the caller's loop."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        await asyncio.to_thread(self._thread.join, 30)

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            elector, close = self._make()
            self._elector = elector
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            self._started.set()
        task = asyncio.create_task(elector.run(), name="leader-election")
        try:
            await self._stopping.wait()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await elector.release()
            await close()
