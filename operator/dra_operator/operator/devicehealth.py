"""Device health in the Pod: a Pod whose allocated device turns unhealthy gets an event and a condition.

The leader checks its caches every `interval` seconds (dra_operator.allocation.health: a device withdrawn
from its slice, or carrying the agent's health taint or a NoExecute taint). Each Pod a claim with such a
device is reserved for gets, once per device, a Warning event `DeviceUnhealthy` naming the device and why,
and the condition `resource.dra-operator.io/DevicesHealthy` = False with the same message in its status (a
strategic merge patch of pods/status: the kubelet keeps conditions it does not own). Kubernetes 1.36 shows
device health in `status.containerStatuses[].allocatedResourcesStatus`, which only the kubelet writes; the
condition is where `kubectl describe pod` shows it on every cluster.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

import structlog

from dra_operator.admission import names
from dra_operator.allocation.health import CurrentDevices, current_devices, unhealthy_among
from dra_operator.allocation.usage import DeviceKey, allocation_results
from dra_operator.kube.client import Kube, KubeError, NotLeading, path_of
from dra_operator.operator.events import Recorder
from dra_operator.operator.periodic import Kept, Unchanged, leader_passes
from dra_operator.operator.slices import slice_models
from dra_operator.operator.state import CLAIMS, PODS, SLICES, Json, State

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
        claims = list(self.state.all(CLAIMS))
        problems = unhealthy_among(self._current.get(self._gather), claims) if claims else {}
        told, untold = 0, 0
        holders: set[str] = set()
        for claim in claims:
            bad = {key: problems[key] for key, _ in allocation_results(claim) if key in problems}
            for consumer in (claim.get("status") or {}).get("reservedFor") or []:
                uid = str(consumer.get("uid"))
                holders.add(uid)
                new = {key: why for key, why in bad.items() if key not in self.reported.get(uid, set())}
                if not new:
                    continue
                pod = self.state.pod_by_uid(uid)
                if pod is not None and await self._tell(pod, claim, new):
                    self.reported.setdefault(uid, set()).update(new)
                    told += 1
                else:  # not in the cache yet, or the write failed: the next pass tries again
                    untold += 1
        for uid in set(self.reported) - holders:  # Pods that hold no claim any more
            del self.reported[uid]
        self.unchanged.settled(None if untold else revisions)
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
