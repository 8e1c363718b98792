"""Device taints at work on running Pods: NoExecute evictions, and each DeviceTaintRule's status.

One mechanism for every device taint, whoever set it: a DeviceTaintRule (an administrator), or the node agent
in the device's ResourceSlice (`--on-unhealthy taint|evict` after a critical Xid). The allocator already keeps
new claims off devices with a NoSchedule or NoExecute taint they do not tolerate (dra_operator.allocation);
this loop, run by the leader every `interval` seconds and when a rule or slice changes, does the rest:

- A Pod whose claim holds a device with a NoExecute taint that the claim's request does not tolerate is
  evicted: a Warning event `DeviceTaintEviction` naming the device, the taint and where it comes from, the
  condition DisruptionTarget (reason DeletionByDeviceTaintManager, as Kubernetes writes it), then a delete
  (uid precondition). A toleration with `tolerationSeconds` defers the eviction until that long after the
  taint was added (`timeAdded`: a rule's own, else its creation; for a slice taint without one, when this
  replica first saw it). Its controller, if any, makes a new Pod, which the allocator places elsewhere.
- Each rule's `status.matchedDevices` counts the devices it taints now, and for a NoExecute rule the condition
  EvictionInProgress says whether Pods are being evicted (or wait for their toleration to run out). A rule
  whose CEL selector fails on a device gets a Warning event `SelectorFailed` (the device does not match).
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Mapping

import structlog

from dra_operator.allocation.snapshot import DeviceID
from dra_operator.allocation.taints import (
    Eviction,
    RuleTaints,
    device_taints,
    due_now,
    evictions,
    format_time,
)
from dra_operator.api.resource import DeviceTaint
from dra_operator.kube.client import Kube, KubeError, NotLeading, ours, path_of
from dra_operator.operator.allocating import Allocator
from dra_operator.operator.events import Recorder
from dra_operator.operator.periodic import Kept, Unchanged, leader_passes
from dra_operator.operator.placement import is_done
from dra_operator.operator.state import CLAIMS, SLICES, TAINT_RULES, Json, State

log = structlog.get_logger("dra_operator.taintrules")

DEFAULT_INTERVAL = 2.0
EVICTION_REASON = "DeviceTaintEviction"
DISRUPTION_REASON = "DeletionByDeviceTaintManager"
EVICTING = "EvictionInProgress"

DeviceTaints = dict[DeviceID, tuple[DeviceTaint, ...]]
TaintId = tuple[tuple[str, str, str], str, str, str]  # (device, key, value, effect)


class TaintRules:
    def __init__(
        self,
        kube: Kube,
        state: State,
        recorder: Recorder,
        allocator: Allocator,
        is_leader: Callable[[], bool],
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.kube, self.state, self.recorder, self.allocator = kube, state, recorder, allocator
        self.is_leader, self.interval = is_leader, interval
        self.wake = asyncio.Event()
        self.evicted: set[str] = set()  # Pod uids deleted by this replica
        self._first_seen: dict[TaintId, str] = {}  # slice taints without timeAdded -> when first seen
        self.unchanged = Unchanged(state, SLICES, TAINT_RULES, CLAIMS)
        # Gathering every device's taints each pass cost 6.7 % of the operator's CPU in a burst.
        self._taints: Kept[tuple[RuleTaints, DeviceTaints]] = Kept(state, SLICES, TAINT_RULES)

    def changed(self) -> None:
        """A rule or slice changed: look now rather than at the next tick."""
        self.wake.set()

    async def run(self) -> None:
        await leader_passes(self.interval, self.is_leader, self.check, self.wake)

    async def check(self, now: datetime.datetime | None = None) -> int:
        """Evict what is due and bring the rules' status up to date; returns how many Pods were evicted.
        Skipped while slices, rules and claims are unchanged since a pass that found no eviction at all
        (none due, none waiting for a toleration to run out)."""
        if self.unchanged.since_settled():
            return 0
        revisions = self.unchanged.now()
        now = now or datetime.datetime.now(datetime.UTC)
        rules = list(self.state.all(TAINT_RULES))
        ruled, taints = self._device_taints(rules)
        taints = self._stamped(taints, now)
        # Only NoExecute taints evict: without one, no claim need be read (10,000 claims: tens of ms a pass).
        draining = any(t.effect == "NoExecute" for listed in taints.values() for t in listed)
        claims = list(self.state.all(CLAIMS)) if draining else []
        found = evictions(claims, taints, now) if claims else []
        evicted = 0
        for eviction in due_now(found, now):
            for consumer in eviction.consumers:
                if consumer.uid not in self.evicted and await self._evict(consumer.uid, eviction, rules):
                    evicted += 1
        written = await self._write_statuses(rules, ruled.matched, found, now)
        self.unchanged.settled(revisions if written and not found and not ruled.failures else None)
        if self.evicted:  # Pods that are gone need no remembering
            self.evicted = {uid for uid in self.evicted if self.state.pod_by_uid(uid) is not None}
        for name, failures in ruled.failures.items():
            rule = next((r for r in rules if r["metadata"]["name"] == name), None)
            if rule is not None:
                listed = "; ".join(f.render() for f in failures[:5])
                self.recorder.warning(
                    rule, "SelectorFailed", f"the devices these fail on are not tainted: {listed}"
                )
        return evicted

    def _device_taints(self, rules: list[Json]) -> tuple[RuleTaints, DeviceTaints]:
        """What the rules taint, and every device's taints (the slices' own and the rules'), kept while no
        slice's spec and no rule changed."""

        def gather() -> tuple[RuleTaints, DeviceTaints]:
            slices = list(self.state.all(SLICES))
            ruled = self.allocator.rule_taints(slices, rules)
            return ruled, device_taints(self.allocator.slice_models(slices), ruled.by_device)

        return self._taints.get(gather)

    def _stamped(self, taints: DeviceTaints, now: datetime.datetime) -> DeviceTaints:
        """Slice taints without timeAdded get the moment this replica first saw them (tolerationSeconds
        counts from it); forget the ones that are gone."""
        seen: set[TaintId] = set()
        stamped: DeviceTaints = {}
        for device, listed in taints.items():
            out = []
            for taint in listed:
                if taint.time_added or taint.effect != "NoExecute":
                    out.append(taint)
                    continue
                key: TaintId = (device, taint.key, taint.value or "", taint.effect)
                seen.add(key)
                first = self._first_seen.setdefault(key, format_time(now))
                out.append(taint.model_copy(update={"time_added": first}))
            stamped[device] = tuple(out)
        for key in set(self._first_seen) - seen:
            del self._first_seen[key]
        return stamped

    async def _evict(self, uid: str, eviction: Eviction, rules: list[Json]) -> bool:
        pod = self.state.pod_by_uid(uid)
        if pod is None or is_done(pod) or (pod.get("metadata") or {}).get("deletionTimestamp"):
            return False
        meta = pod["metadata"]
        message = f"evicted: {eviction.message} ({_source(eviction, rules)})"
        self.recorder.warning(pod, EVICTION_REASON, message)
        log.warning("evicting pod", pod=f"{meta['namespace']}/{meta['name']}", why=message)
        path = path_of("pods", namespace=meta["namespace"], name=meta["name"])
        condition = {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": DISRUPTION_REASON,
            "message": message[:1024],
            "lastTransitionTime": format_time(datetime.datetime.now(datetime.UTC)),
        }
        try:
            await self.kube.request(
                "PATCH",
                path + "/status",
                {"status": {"conditions": [condition]}},
                content_type="application/strategic-merge-patch+json",
            )
            await self.kube.delete(path, preconditions={"uid": uid})
        except NotLeading:
            return False
        except KubeError as exc:
            if exc.status not in (404, 409):
                log.warning("eviction failed", pod=f"{meta['namespace']}/{meta['name']}", error=str(exc))
                return False
        self.evicted.add(uid)
        return True

    async def _write_statuses(
        self,
        rules: list[Json],
        counts: Mapping[str, int],
        found: list[Eviction],
        now: datetime.datetime,
    ) -> bool:
        """Write the rules' status where it changed; False when a write failed (the next pass tries again)."""
        done = True
        for rule in rules:
            name = str(rule["metadata"]["name"])
            spec = rule.get("spec") or {}
            taint = spec.get("taint") or {}
            status: Json = {"matchedDevices": counts.get(name, 0)}
            current = rule.get("status") or {}
            if taint.get("effect") == "NoExecute":
                pending = {c.uid for e in found if _same(e.taint, taint) for c in e.consumers} - self.evicted
                status["conditions"] = [_evicting(current, len(pending), now)]
            if all(current.get(k) == v for k, v in status.items()):
                continue
            try:
                patched = await self.kube.merge_patch(
                    ours("devicetaintrules", name=name, subresource="status"), {"status": status}
                )
            except NotLeading:
                return False
            except KubeError as exc:
                if exc.status != 404:
                    log.warning("taint rule status not written", rule=name, error=str(exc))
                    done = False
                continue
            if patched.get("metadata"):
                self.state.wrote(TAINT_RULES, patched)
        return done


def _same(taint: DeviceTaint, spec: Json) -> bool:
    return (taint.key, taint.value or "", taint.effect) == (
        spec.get("key"),
        spec.get("value") or "",
        spec.get("effect"),
    )


def _source(eviction: Eviction, rules: list[Json]) -> str:
    """Where the taint comes from: the rules that set it, else the device's ResourceSlice (the node agent)."""
    names = sorted(
        str(r["metadata"]["name"])
        for r in rules
        if _same(eviction.taint, (r.get("spec") or {}).get("taint") or {})
    )
    if names:
        return "DeviceTaintRule " + ", ".join(names)
    return "set in the device's ResourceSlice"


def _evicting(current: Json, pending: int, now: datetime.datetime) -> Json:
    """The EvictionInProgress condition; its lastTransitionTime moves only when its status does."""
    before: Json = next((c for c in current.get("conditions") or [] if c.get("type") == EVICTING), {})
    value = "True" if pending else "False"
    return {
        "type": EVICTING,
        "status": value,
        "reason": "PodsPending" if pending else "NoPodsPending",
        "message": (
            f"{pending} Pod(s) hold devices this rule taints without tolerating it: being evicted or waiting "
            "for their tolerationSeconds"
            if pending
            else "no Pod holds a device this rule taints without tolerating it"
        ),
        "lastTransitionTime": (before.get("lastTransitionTime") if before.get("status") == value else None)
        or format_time(now),
    }
