"""DeviceTaintRules applied to devices, and the evictions their NoExecute taints call for (pure).

A rule taints every device its `deviceSelector` matches: driver, pool and device name equal where set and
every CEL selector true (an empty selector matches all devices, a missing one none). `rule_taints` gives the
taints per device, which `Snapshot.build(extra_taints=...)` adds to the slices' own, so the search avoids
devices whose taints a request does not tolerate, as it does for slice taints. Only the current (highest)
generation of each pool is looked at, as the allocator and Kubernetes' eviction controller do.

`evictions` decides which Pods must go because a device their claim holds carries a NoExecute taint, with
the semantics of Kubernetes' device taint eviction controller: a taint that none of the allocation result's
tolerations tolerates evicts from the time it was added; one tolerated with `tolerationSeconds` evicts that
much later (the smallest of several, negative counting as 0); one tolerated without `tolerationSeconds`
never. The caller deletes the Pods that are due and waits until `next_due` for the rest.

Selector results come from the shared `SelectorCache` under the same device tokens as the snapshot's, so a
rule's CEL is evaluated at most once per device version. A selector that fails on a device (a CEL runtime
error, or an expression that does not compile) means "does not match" there; the failure is reported in
`RuleTaints.failures`, never raised.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dra_operator.allocation.selectors import Result, SelectorCache, SelectorFailure
from dra_operator.allocation.snapshot import (
    ClaimKey,
    DeviceID,
    TolerationKey,
    _slice_token,
    device_token,
    tolerates,
)
from dra_operator.allocation.usage import allocation_results
from dra_operator.api.resource import Device, DeviceTaint, DeviceTaintRule, ResourceSlice
from dra_operator.cel import CelDevice

__all__ = [
    "Consumer",
    "Eviction",
    "RuleTaints",
    "current_devices",
    "current_slices",
    "device_taints",
    "due_now",
    "evictions",
    "format_time",
    "next_due",
    "parse_time",
    "rule_matches",
    "rule_taints",
]

Json = Mapping[str, Any]


# ------------------------------------------------------------------------------------------------ times


def parse_time(text: str | None) -> datetime | None:
    """A Kubernetes timestamp (RFC 3339, e.g. `2025-01-01T00:00:00Z`) as an aware datetime; None when unset
    or unreadable."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def format_time(moment: datetime) -> str:
    """The Kubernetes form of a timestamp: UTC, whole seconds, `Z`."""
    return _aware(moment).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# ------------------------------------------------------------------------------------------------ rules


def current_slices(slices: Iterable[ResourceSlice]) -> list[ResourceSlice]:
    """The slices of each pool's highest generation, in slice order."""
    slices = list(slices)
    newest: dict[tuple[str, str], int] = {}
    for slice_ in slices:
        key = (slice_.spec.driver, slice_.spec.pool.name)
        newest[key] = max(newest.get(key, slice_.spec.pool.generation), slice_.spec.pool.generation)
    return [s for s in slices if s.spec.pool.generation == newest[(s.spec.driver, s.spec.pool.name)]]


def current_devices(slices: Iterable[ResourceSlice]) -> list[tuple[DeviceID, ResourceSlice, Device]]:
    """Every device of each pool's highest generation, in slice order (duplicates of one id kept)."""
    found: list[tuple[DeviceID, ResourceSlice, Device]] = []
    for slice_ in current_slices(slices):
        spec = slice_.spec
        for device in spec.devices or ():
            found.append(((spec.driver, spec.pool.name, device.name), slice_, device))
    return found


def rule_matches(
    rule: DeviceTaintRule,
    device_id: DeviceID,
    device: Device,
    cache: SelectorCache,
    *,
    slice_: ResourceSlice | None = None,
) -> Result:
    """Whether the rule's selector matches the device: True, False, or the SelectorFailure of the first CEL
    selector that could not be evaluated (which does not match). `slice_` (the device's slice) lets the
    cache key results by slice version; without it they are keyed by the device object."""
    selector = rule.spec.device_selector
    if selector is None:
        return False
    driver, pool, name = device_id
    if (
        (selector.driver is not None and selector.driver != driver)
        or (selector.pool is not None and selector.pool != pool)
        or (selector.device is not None and selector.device != name)
    ):
        return False
    if not selector.selectors:
        return True
    # The snapshot's token for the same device, so both share cached CEL results.
    token, anchor = device_token(_slice_token(slice_) if slice_ is not None else None, device)
    bound: list[CelDevice] = []

    def cel_device() -> CelDevice:
        if not bound:
            bound.append(CelDevice.from_device(driver, device))
        return bound[0]

    label = "/".join(device_id)
    for entry in selector.selectors:
        result = cache.result(entry.cel.expression, token, anchor, cel_device, label)
        if result is not True:
            return result
    return True


@dataclass(frozen=True, slots=True)
class RuleTaints:
    """What the rules do now: the taints per device, how many devices each rule taints (its
    `status.matchedDevices`), and the selector failures per rule (compile errors once per expression)."""

    by_device: Mapping[DeviceID, tuple[DeviceTaint, ...]] = field(default_factory=dict)
    matched: Mapping[str, int] = field(default_factory=dict)
    failures: Mapping[str, tuple[SelectorFailure, ...]] = field(default_factory=dict)

    def taints_of(self, device: DeviceID) -> tuple[DeviceTaint, ...]:
        return self.by_device.get(device, ())


def _stamped(rule: DeviceTaintRule, now: datetime | None) -> DeviceTaint:
    """The rule's taint with a timeAdded: its own, else the rule's creation (when the taint came into
    effect), else `now`; eviction timing (tolerationSeconds) counts from it."""
    taint = rule.spec.taint
    if taint.time_added:
        return taint
    added = rule.metadata.creation_timestamp or (format_time(now) if now is not None else None)
    return taint if added is None else taint.model_copy(update={"time_added": added})


def rule_taints(
    rules: Sequence[DeviceTaintRule],
    slices: Sequence[ResourceSlice],
    cache: SelectorCache,
    now: datetime | None = None,
) -> RuleTaints:
    """The taints the rules add to the devices of the slices (rules in name order, so one device's taints
    read the same on every call). Effect None taints are included: they inform and block nothing."""
    if not rules:
        return RuleTaints()  # most clusters have none: no pass over every device
    devices = current_devices(slices)
    by_device: dict[DeviceID, list[DeviceTaint]] = {}
    matched: dict[str, int] = {}
    failures: dict[str, tuple[SelectorFailure, ...]] = {}
    for rule in sorted(rules, key=lambda r: r.name):
        taint = _stamped(rule, now)
        hits: set[DeviceID] = set()
        failed: list[SelectorFailure] = []
        compile_errors: set[str] = set()
        for device_id, slice_, device in devices:
            if device_id in hits:
                continue  # the same id twice in a pool (an invalid pool): tainted once
            result = rule_matches(rule, device_id, device, cache, slice_=slice_)
            if result is True:
                hits.add(device_id)
                by_device.setdefault(device_id, []).append(taint)
            elif isinstance(result, SelectorFailure):
                if not result.compile_error:
                    failed.append(result)
                elif result.expression not in compile_errors:
                    compile_errors.add(result.expression)
                    failed.append(result)
        matched[rule.name] = len(hits)
        if failed:
            failures[rule.name] = tuple(failed)
    return RuleTaints({k: tuple(v) for k, v in by_device.items()}, matched, failures)


def device_taints(
    slices: Iterable[ResourceSlice], extra: Mapping[DeviceID, Sequence[DeviceTaint]] | None = None
) -> dict[DeviceID, tuple[DeviceTaint, ...]]:
    """Every taint per device, for `evictions`: the slice's own (current generation) first, then `extra`
    (e.g. `RuleTaints.by_device`). Devices without any taint are left out."""
    found: dict[DeviceID, tuple[DeviceTaint, ...]] = {}
    # A loop without a tuple per device: a pass over 40,000 devices, nearly all untainted, is the leader's
    # work after every slice change (operator.taintrules).
    for slice_ in current_slices(slices):
        spec = slice_.spec
        for device in spec.devices or ():
            if device.taints:
                device_id = (spec.driver, spec.pool.name, device.name)
                if device_id not in found:
                    found[device_id] = tuple(device.taints)
    for device_id, taints in (extra or {}).items():
        if taints:
            found[device_id] = found.get(device_id, ()) + tuple(taints)
    return found


# ------------------------------------------------------------------------------------------- evictions


@dataclass(frozen=True, slots=True)
class Consumer:
    """A Pod that reserves a claim (`status.reservedFor` with resource `pods`)."""

    name: str
    uid: str


@dataclass(frozen=True, slots=True)
class Eviction:
    """The Pods of one claim must go because of one NoExecute taint on one device the claim holds, at `due`.

    `tolerated_for` is the toleration's grace in seconds (None: the taint is not tolerated at all)."""

    claim: ClaimKey
    consumers: tuple[Consumer, ...]
    device: DeviceID
    taint: DeviceTaint
    due: datetime
    tolerated_for: int | None
    message: str

    def is_due(self, now: datetime) -> bool:
        return self.due <= _aware(now)


def _tolerations(result: Json) -> list[tuple[TolerationKey, int | None]]:
    """The result's tolerations as (toleration key, tolerationSeconds); the API gives them as dicts."""
    found: list[tuple[TolerationKey, int | None]] = []
    for raw in result.get("tolerations") or ():
        if not isinstance(raw, Mapping):
            continue
        key: TolerationKey = (
            str(raw.get("key") or ""),
            str(raw.get("operator") or "Equal"),
            str(raw.get("value") or ""),
            str(raw.get("effect") or ""),
        )
        seconds = raw.get("tolerationSeconds")
        found.append((key, seconds if isinstance(seconds, int) and not isinstance(seconds, bool) else None))
    return found


def _grace(
    tolerations: Sequence[tuple[TolerationKey, int | None]], taint: DeviceTaint
) -> tuple[bool, int | None]:
    """How the tolerations tolerate the NoExecute taint, as (forever, seconds): (False, None) when none does,
    (True, None) when one does forever, else the smallest tolerationSeconds (negative counts as 0). Seconds
    count only on a toleration of effect NoExecute, as the API documents; on any other matching toleration
    they are ignored, so it tolerates the taint forever.

    An empty effect matches every effect (the API's meaning, and the allocator's), as for node taints: a
    toleration of every taint (`operator: Exists` alone) protects from eviction too."""
    grace: int | None = None
    for key, seconds in tolerations:
        if not tolerates(key, taint):
            continue
        if seconds is None or key[3] != "NoExecute":
            return True, None
        grace = max(0, seconds) if grace is None else min(grace, max(0, seconds))
    return False, grace


def _consumers(claim: Json) -> tuple[Consumer, ...]:
    reserved = (claim.get("status") or {}).get("reservedFor") or ()
    return tuple(
        Consumer(str(ref.get("name") or ""), str(ref.get("uid") or ""))
        for ref in reserved
        if isinstance(ref, Mapping) and ref.get("resource") == "pods" and not ref.get("apiGroup")
    )


def evictions(
    claims: Iterable[Json],
    taints: Mapping[DeviceID, Sequence[DeviceTaint]],
    now: datetime,
) -> list[Eviction]:
    """Every eviction the NoExecute taints call for, due now or later (see `Eviction.is_due`, `next_due`).

    `claims` are ResourceClaim dicts as the API gives them; only allocated claims that Pods reserve count
    (an unused claim has nobody to evict). `taints` are all taints per device (`device_taints`). A taint
    without timeAdded counts from `now`: tolerated for some seconds, it would never come due, so rule taints
    get one from `rule_taints`."""
    now = _aware(now)
    found: list[Eviction] = []
    for claim in claims:
        consumers = _consumers(claim)
        if not consumers:
            continue
        meta = claim.get("metadata") or {}
        key: ClaimKey = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        for device_id, result in allocation_results(claim):
            tolerations: list[tuple[TolerationKey, int | None]] | None = None
            for taint in taints.get(device_id, ()):
                if taint.effect != "NoExecute":
                    continue
                if tolerations is None:
                    tolerations = _tolerations(result)
                forever, seconds = _grace(tolerations, taint)
                if forever:
                    continue
                added = parse_time(taint.time_added) or now
                due = added + timedelta(seconds=seconds or 0)
                found.append(
                    Eviction(
                        key,
                        consumers,
                        device_id,
                        taint,
                        due,
                        seconds,
                        _message(key, device_id, taint, seconds),
                    )
                )
    return found


def _message(claim: ClaimKey, device: DeviceID, taint: DeviceTaint, seconds: int | None) -> str:
    name = "/".join(part for part in claim if part)
    head = f"device {'/'.join(device)} has taint {taint.render()}, which claim {name}"
    if seconds is None:
        return f"{head} does not tolerate"
    since = f" (taint added {taint.time_added})" if taint.time_added else ""
    return f"{head} tolerates for only {seconds}s{since}"


def next_due(found: Iterable[Eviction], now: datetime) -> datetime | None:
    """The earliest due time after `now` among the evictions (when to look again), None if none is pending."""
    now = _aware(now)
    pending = [e.due for e in found if e.due > now]
    return min(pending) if pending else None


def due_now(found: Iterable[Eviction], now: datetime) -> list[Eviction]:
    """The evictions that are due at `now`."""
    return [e for e in found if e.is_due(now)]
