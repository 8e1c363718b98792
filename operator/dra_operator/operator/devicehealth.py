"""Device health in the Pod: a Pod whose allocated device turns unhealthy gets an event and a condition.

The leader checks its caches every `interval` seconds (dra_operator.allocation.health: a device withdrawn
from its slice, or carrying the agent's health taint or a NoExecute taint). Each Pod a claim with such a
device is reserved for gets, once per device, a Warning event `DeviceUnhealthy` naming the device and why,
and the condition `resource.dra-operator.io/DevicesHealthy` = False with the same message in its status (a
strategic merge patch of pods/status: the kubelet keeps conditions it does not own). Kubernetes 1.36 shows
device health in `status.containerStatuses[].allocatedResourcesStatus`, which only the kubelet writes; the
condition is where `kubectl describe pod` shows it on every cluster.

A pass checks every claim after a slice changed (a device's health can only change with its slice), and
otherwise only the claims the caches' change journal names since the last pass and those whose report is
still owed: a burst of allocations costs each pass its new claims, not every claim again (10,000 claims: 57 ms
a pass, every 2 s; bench/health_pass.py).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable

import structlog

from dra_operator.admission import names
from dra_operator.allocation.health import CurrentDevices, current_devices, unhealthy_of
from dra_operator.allocation.usage import DeviceKey
from dra_operator.kube.client import Kube, KubeError, NotLeading, path_of
from dra_operator.operator.events import Recorder
from dra_operator.operator.periodic import Kept, Unchanged, leader_passes
from dra_operator.operator.slices import slice_models
from dra_operator.operator.state import CLAIMS, PODS, SLICES, Json, Key, State, key_of

log = structlog.get_logger("dra_operator.devicehealth")

CONDITION = names.PREFIX + "DevicesHealthy"
REASON = "DeviceUnhealthy"
DEFAULT_INTERVAL = 2.0


def condition_patch(message: str, now: datetime.datetime) -> Json:
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    condition = {
        "type": CONDITION,
        "status": "False",
        "reason": REASON,
        "message": message,
        "lastTransitionTime": stamp,
        "lastProbeTime": None,
    }
    return {"status": {"conditions": [condition]}}


class DeviceHealthWatch:
    def __init__(
        self,
        kube: Kube,
        state: State,
        recorder: Recorder,
        is_leader: Callable[[], bool],
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.kube, self.state, self.recorder, self.is_leader = kube, state, recorder, is_leader
        self.interval = interval
        self.reported: dict[str, set[DeviceKey]] = {}  # Pod uid -> devices already reported
        self.unchanged = Unchanged(state, SLICES, CLAIMS)
        self._current: Kept[CurrentDevices] = Kept(state, SLICES)  # the slices' current devices
        # (journal epoch, slices' revision, claims' revision) the last pass read up to; None: none ran yet.
        self._read: tuple[int, int, int] | None = None
        self._owed: set[Key] = set()  # claims with a report the last pass could not deliver

    async def run(self) -> None:
        await leader_passes(self.interval, self.is_leader, self.check)

    def _gather(self) -> CurrentDevices:
        return current_devices(slice_models(self.state.all(SLICES)))

    async def check(self) -> int:
        """Report what is new; returns how many Pods were told. Skipped while slices and claims are unchanged
        since a pass that left nothing to report."""
        if self.unchanged.since_settled():
            return 0
        revisions = self.unchanged.now()
        state = self.state
        slices_revision = state.revision_of(SLICES)
        every = self._read is None or self._read[:2] != (state.epoch, slices_revision)
        claims: Iterable[Json]
        if every:
            claims_revision = state.revision
            claims = list(state.all(CLAIMS))
        else:
            assert self._read is not None
            claims_revision, keys = state.changes(CLAIMS, self._read[2])
            found = (state.get(CLAIMS, key) for key in {*keys, *self._owed})
            claims = [claim for claim in found if claim is not None]
        self._read = (state.epoch, slices_revision, claims_revision)
        current = self._current.get(self._gather)
        told, owed = 0, set()
        holders: set[str] = set()
        for claim in claims:
            consumers = [str(c.get("uid")) for c in (claim.get("status") or {}).get("reservedFor") or []]
            holders.update(consumers)
            bad = unhealthy_of(current, claim) if consumers else {}
            for uid in consumers if bad else ():
                new = {key: why for key, why in bad.items() if key not in self.reported.get(uid, set())}
                if not new:
                    continue
                pod = state.pod_by_uid(uid)
                if pod is not None and await self._tell(pod, claim, new):
                    self.reported.setdefault(uid, set()).update(new)
                    told += 1
                else:  # not in the cache yet, or the write failed: the next pass tries again
                    owed.add(key_of(claim))
        if every:  # only a pass over every claim knows them all; the entries are few (told Pods)
            for uid in set(self.reported) - holders:  # Pods that hold no claim any more
                del self.reported[uid]
        self._owed = owed
        self.unchanged.settled(None if owed else revisions)
        return told

    async def _tell(self, pod: Json, claim: Json, bad: dict[DeviceKey, str]) -> bool:
        meta = pod["metadata"]
        listed = "; ".join(f"{'/'.join(key)} ({why})" for key, why in sorted(bad.items()))
        message = (
            f"devices allocated to claim {claim['metadata'].get('namespace')}/{claim['metadata']['name']} "
            f"are unhealthy: {listed}"
        )
        self.recorder.warning(pod, REASON, message)
        try:
            patched = await self.kube.request(
                "PATCH",
                path_of("pods", namespace=meta["namespace"], name=meta["name"], subresource="status"),
                condition_patch(message, datetime.datetime.now(datetime.UTC)),
                content_type="application/strategic-merge-patch+json",
            )
        except NotLeading:
            return False
        except KubeError as exc:
            if exc.status != 404:
                log.warning(
                    "pod condition not written", pod=f"{meta['namespace']}/{meta['name']}", error=str(exc)
                )
            return exc.status == 404  # a Pod that is gone needs no condition
        self.state.wrote(PODS, patched)
        log.warning("allocated devices unhealthy", pod=f"{meta['namespace']}/{meta['name']}", devices=listed)
        return True
