"""How many devices each ResourceSlice offers, how many are allocated and how many are free (pure).

The free-devices view of `kubectl get resourceslices.resource.dra-operator.io` (the operator writes it into
each slice's status) and of `dra-operator pools`. A device is allocated when a claim's `status.allocation`
names it (driver, pool, device), adminAccess results excepted: they do not take the device, as in allocation.
A device with a NoSchedule or NoExecute taint is counted as tainted: new claims that do not tolerate it avoid
it. Free is what is neither allocated nor tainted.

`slice_usage` counts from scratch (a one-off look); `UsageLedger` keeps the counts current change by change
(the leader's view between its passes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dra_operator.api.resource import ResourceSlice

Json = Mapping[str, Any]
DeviceKey = tuple[str, str, str]  # (driver, pool, device)

_AVOIDED = frozenset({"NoSchedule", "NoExecute"})


@dataclass(frozen=True)
class SliceUsage:
    """One slice's counts; `status()` is the shape written into the slice's status."""

    node: str
    driver: str
    pool: str
    devices: int
    allocated: int
    tainted: int

    @property
    def free(self) -> int:
        return max(0, self.devices - self.allocated - self.tainted)

    def status(self) -> dict[str, int]:
        return {
            "devices": self.devices,
            "allocated": self.allocated,
            "tainted": self.tainted,
            "free": self.free,
        }


def allocation_results(claim: Json) -> Iterator[tuple[DeviceKey, Json]]:
    """Each device result of a claim's `status.allocation`, with its (driver, pool, device)."""
    allocation = (claim.get("status") or {}).get("allocation") or {}
    for result in (allocation.get("devices") or {}).get("results") or []:
        if isinstance(result, Mapping):
            yield (str(result.get("driver")), str(result.get("pool")), str(result.get("device"))), result


def claim_devices(claim: Json) -> frozenset[DeviceKey]:
    """The (driver, pool, device) one claim's allocation takes (adminAccess results excepted)."""
    return frozenset(key for key, result in allocation_results(claim) if not result.get("adminAccess"))


def allocated_devices(claims: Iterable[Json]) -> set[DeviceKey]:
    """Every (driver, pool, device) some claim's allocation takes (adminAccess results excepted)."""
    return {
        key for claim in claims for key, result in allocation_results(claim) if not result.get("adminAccess")
    }


@dataclass(frozen=True)
class SliceDevices:
    """What one slice offers, as counting needs it: read once per change of the slices, not per count."""

    node: str
    driver: str
    pool: str
    keys: tuple[DeviceKey, ...]
    self_tainted: frozenset[DeviceKey]  # devices with a NoSchedule or NoExecute taint of the slice's own


def slice_devices(slices: Iterable[ResourceSlice]) -> dict[str, SliceDevices]:
    """Slice name -> the devices it offers."""
    offered: dict[str, SliceDevices] = {}
    for slice_ in slices:
        spec = slice_.spec
        keys = tuple((spec.driver, spec.pool.name, device.name) for device in spec.devices or ())
        tainted = frozenset(
            key
            for key, device in zip(keys, spec.devices or (), strict=True)
            if any(t.effect in _AVOIDED for t in device.taints or ())
        )
        node = spec.node_name or ("(all nodes)" if spec.all_nodes else "(selected nodes)")
        offered[slice_.name] = SliceDevices(node, spec.driver, spec.pool.name, keys, tainted)
    return offered


def avoided(extra_taints: Mapping[DeviceKey, Iterable[Any]] | None) -> set[DeviceKey]:
    """The devices that taints from elsewhere than their slice (DeviceTaintRules: objects with an `effect`)
    make new claims avoid."""
    return {
        key
        for key, taints in (extra_taints or {}).items()
        if any(getattr(t, "effect", None) in _AVOIDED for t in taints)
    }


def count_usage(
    offered: Mapping[str, SliceDevices], taken: set[DeviceKey], ruled: set[DeviceKey]
) -> dict[str, SliceUsage]:
    """Slice name -> its usage, given every device some claim takes and those tainted from elsewhere."""
    usage: dict[str, SliceUsage] = {}
    for name, s in offered.items():
        allocated = len(taken.intersection(s.keys))
        tainted = len((ruled.intersection(s.keys) | s.self_tainted) - taken) if ruled or s.self_tainted else 0
        usage[name] = SliceUsage(s.node, s.driver, s.pool, len(s.keys), allocated, tainted)
    return usage


class UsageLedger:
    """The counts of every slice kept current change by change: what each slice offers, which devices each
    claim takes and which the DeviceTaintRules avoid. `changed` answers the counts of the slices they may
    have moved since it last answered, so keeping the view costs the changes, not a count over every slice
    and claim (5,000 slices and 10,000 claims: about 19 ms a count; bench/pool_status.py). Its counts are
    `count_usage`'s for the same slices, claims and rules.

    A device's change marks every slice of its pool (most pools have one slice): a lookup per pool, not per
    device, keeps what the leader holds small (per device, 9.7 MiB at 40,000 devices)."""

    def __init__(self) -> None:
        self._offered: dict[str, SliceDevices] = {}
        self._pools: dict[tuple[str, str], list[str]] = {}  # (driver, pool) -> the slices of that pool
        self._claims: dict[Hashable, tuple[DeviceKey, ...]] = {}  # only claims that take a device
        self._takers: Counter[DeviceKey] = Counter()  # device -> how many claims take it (one, unless broken)
        self._ruled: frozenset[DeviceKey] = frozenset()
        self._dirty: set[str] = set()  # slices whose counts may have moved since `changed` answered

    @classmethod
    def of(
        cls, offered: Mapping[str, SliceDevices], claims: Iterable[tuple[Hashable, Iterable[DeviceKey]]]
    ) -> UsageLedger:
        """A ledger of these slices and claims (key, devices taken) at once, every slice to be answered: as
        putting each one, in less time."""
        ledger = cls()
        ledger._offered = dict(offered)
        for name, devices in offered.items():
            ledger._pools.setdefault((devices.driver, devices.pool), []).append(name)
        for claim, taken in claims:
            held = tuple(set(taken))
            if held:
                ledger._claims[claim] = held
                ledger._takers.update(held)
        ledger._dirty = set(offered)
        return ledger

    def put_slice(self, name: str, offered: SliceDevices | None) -> None:
        """The slice `name` offers this now (None: it is gone, or does not validate)."""
        old = self._offered.pop(name, None)
        if old is not None:
            pool = (old.driver, old.pool)
            self._pools[pool].remove(name)
            if not self._pools[pool]:
                del self._pools[pool]
        self._dirty.discard(name)
        if offered is None:
            return
        self._offered[name] = offered
        self._pools.setdefault((offered.driver, offered.pool), []).append(name)
        self._dirty.add(name)

    def put_claim(self, claim: Hashable, taken: Iterable[DeviceKey]) -> None:
        """The claim `claim` (any key naming it) takes these devices now (none: unallocated, or gone)."""
        old, now = set(self._claims.get(claim, ())), set(taken)
        if old == now:
            return
        for key in old - now:
            self._takers[key] -= 1
            if self._takers[key] <= 0:
                del self._takers[key]
                self._touch(key)
        for key in now - old:
            self._takers[key] += 1
            if self._takers[key] == 1:
                self._touch(key)
        if now:
            self._claims[claim] = tuple(now)
        else:
            self._claims.pop(claim, None)

    def put_ruled(self, ruled: Iterable[DeviceKey]) -> None:
        """The devices that DeviceTaintRules make new claims avoid now (see `avoided`)."""
        now = frozenset(ruled)
        if now != self._ruled:
            for key in now ^ self._ruled:
                self._touch(key)
            self._ruled = now

    def mark(self, names: Iterable[str] | None = None) -> None:
        """Have `changed` answer these slices again (None: every slice), e.g. when their counts were not
        written."""
        self._dirty.update(self._offered if names is None else (n for n in names if n in self._offered))

    def changed(self) -> dict[str, SliceUsage]:
        """Slice name -> its counts, for each slice whose counts may have moved since the last answer."""
        dirty, self._dirty = self._dirty, set()
        return {name: self.usage(name) for name in sorted(dirty)}

    def usage(self, name: str) -> SliceUsage:
        offered = self._offered[name]
        allocated = tainted = 0
        for key in dict.fromkeys(offered.keys):  # a device listed twice counts once, as in `count_usage`
            if key in self._takers:
                allocated += 1
            elif key in offered.self_tainted or key in self._ruled:
                tainted += 1
        return SliceUsage(offered.node, offered.driver, offered.pool, len(offered.keys), allocated, tainted)

    def _touch(self, key: DeviceKey) -> None:
        self._dirty.update(self._pools.get(key[:2], ()))


def slice_usage(
    slices: Iterable[ResourceSlice],
    claims: Iterable[Json],
    extra_taints: Mapping[DeviceKey, Iterable[Any]] | None = None,
) -> dict[str, SliceUsage]:
    """Slice name -> its usage. `extra_taints` are taints from elsewhere than the slice (DeviceTaintRules:
    objects with an `effect`), counted like the slice's own."""
    return count_usage(slice_devices(slices), allocated_devices(claims), avoided(extra_taints))


def table(usage: Mapping[str, SliceUsage]) -> list[list[str]]:
    """Rows for a terminal table (header first), one per slice, by node, driver and pool, with a total."""
    rows = [["NODE", "DRIVER", "POOL", "DEVICES", "ALLOCATED", "TAINTED", "FREE"]]
    ordered = sorted(usage.values(), key=lambda u: (u.node, u.driver, u.pool))
    for u in ordered:
        rows.append([u.node, u.driver, u.pool, str(u.devices), str(u.allocated), str(u.tainted), str(u.free)])
    if ordered:
        totals = [sum(getattr(u, f) for u in ordered) for f in ("devices", "allocated", "tainted", "free")]
        rows.append(["(total)", "", "", *(str(t) for t in totals)])
    return rows
