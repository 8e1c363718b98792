"""Leader election with a coordination.k8s.io/v1 Lease: one replica writes, every replica watches and indexes.

As client-go does it: a candidate takes the Lease when it is free or when its record has not changed for
leaseDurationSeconds as observed on the candidate's own clock (no clock comparison between replicas); the
holder renews every `retry` seconds and, if it cannot renew within `renew_deadline`, gives up leadership —
the operator then exits so that no write of a former leader can follow a new leader's.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

from dra_operator.kube.client import Kube, KubeError, path_of

log = logging.getLogger(__name__)


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
        renew_deadline: float = 10.0,
        retry: float = 2.0,
        on_started: Callable[[], None] = lambda: None,
        on_stopped: Callable[[], None] = lambda: None,
    ) -> None:
        self.kube = kube
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds, self.renew_deadline, self.retry = lease_seconds, renew_deadline, retry
        self.on_started, self.on_stopped = on_started, on_stopped
        self.leading = False
        self._observed: tuple[Any, float] = (None, 0.0)  # (record, monotonic time it was first seen)

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
            self._observed = (record, time.monotonic())
        duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
        expired = time.monotonic() - self._observed[1] > duration
        if holder and holder != self.identity and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        acquired = spec.get("acquireTime") if holder == self.identity else None
        lease["spec"] = self._spec(transitions, acquired)
        updated = await self.kube.replace(self._path, lease)
        spec = updated.get("spec") or {}
        self._observed = (
            (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("acquireTime")),
            time.monotonic(),
        )
        return True

    async def run(self) -> None:
        """Campaign until leading, then renew until that fails for renew_deadline seconds."""
        last_renewed = 0.0
        while True:
            try:
                held = await self._try()
            except KubeError as exc:
                log.info("lease attempt failed: %s", exc)
                held = False
            now = time.monotonic()
            if held:
                last_renewed = now
                if not self.leading:
                    self.leading = True
                    log.info(
                        "became leader (lease %s/%s, identity %s)", self.namespace, self.name, self.identity
                    )
                    self.on_started()
            elif self.leading and now - last_renewed > self.renew_deadline:
                self.leading = False
                log.error("lost the lease %s/%s", self.namespace, self.name)
                self.on_stopped()
                return
            await asyncio.sleep(self.retry)

    async def release(self) -> None:
        """On a graceful stop: hand the Lease over at once (empty holder) instead of letting it expire."""
        if not self.leading:
            return
        self.leading = False
        try:
            lease = await self.kube.get(self._path)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = None
                lease["spec"]["leaseDurationSeconds"] = 1
                await self.kube.replace(self._path, lease)
        except KubeError as exc:
            log.info("lease not released: %s", exc)
