"""How many devices each ResourceSlice offers, how many are allocated and how many are free (pure).

The free-devices view of `kubectl get resourceslices.resource.dra-operator.io` (the operator writes it into
each slice's status) and of `dra-operator pools`. A device is allocated when a claim's `status.allocation`
names it (driver, pool, device), adminAccess results excepted: they do not take the device, as in allocation.
A device with a NoSchedule or NoExecute taint is counted as tainted: new claims that do not tolerate it avoid
it. Free is what is neither allocated nor tainted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
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
