"""Which allocated devices have turned unhealthy since their allocation, and why (pure).

A device counts as unhealthy for the Pods holding it when its pool's current slices (the highest generation)
no longer list it (the node agent withdrew it after a critical Xid, or the node and its slices are gone) or
list it with a taint that the agent's health marks use (`<driver>/xid`, `<driver>/gpu-lost`) or with any
NoExecute taint. A NoSchedule taint an administrator sets to keep new claims off a device says nothing about
its health and is not reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dra_operator.allocation.usage import DeviceKey, allocation_results

Json = Mapping[str, Any]
HEALTH_TAINT_SUFFIXES = ("/xid", "/gpu-lost")


CurrentDevices = dict[tuple[str, str], dict[str, Json]]


def current_devices(slices: Iterable[Json]) -> CurrentDevices:
    """(driver, pool) -> device name -> device, from each pool's highest-generation slices."""
    newest: dict[tuple[str, str], int] = {}
    listed: list[tuple[tuple[str, str], int, Json]] = []
    for obj in slices:
        spec = obj.get("spec") or {}
        pool = spec.get("pool") or {}
        key = (str(spec.get("driver") or ""), str(pool.get("name") or ""))
        generation = int(pool.get("generation") or 0)
        newest[key] = max(newest.get(key, generation), generation)
        listed.append((key, generation, spec))
    devices: CurrentDevices = {key: {} for key in newest}
    for key, generation, spec in listed:
        if generation == newest[key]:
            for device in spec.get("devices") or []:
                if isinstance(device, Mapping):
                    devices[key][str(device.get("name"))] = device
    return devices


def _health_taint(device: Json) -> str | None:
    for taint in device.get("taints") or []:
        if not isinstance(taint, Mapping):
            continue
        key, effect = str(taint.get("key") or ""), str(taint.get("effect") or "")
        if key.endswith(HEALTH_TAINT_SUFFIXES) or effect == "NoExecute":
            value = taint.get("value")
            return f"tainted {key}{'=' + str(value) if value else ''}:{effect}"
    return None


def unhealthy_devices(slices: Iterable[Json], claims: Iterable[Json]) -> dict[DeviceKey, str]:
    """Every (driver, pool, device) an allocated claim holds that is unhealthy now -> why."""
    return unhealthy_among(current_devices(slices), claims)


def unhealthy_among(current: CurrentDevices, claims: Iterable[Json]) -> dict[DeviceKey, str]:
    """`unhealthy_devices` with the slices' `current_devices` already gathered (a caller may keep them while
    no slice changed)."""
    found: dict[DeviceKey, str] = {}
    for claim in claims:
        for key, _ in allocation_results(claim):
            device = current.get(key[:2], {}).get(key[2])
            if device is None:
                found[key] = "no longer offered by its ResourceSlice (withdrawn by the node agent, or gone)"
            elif (why := _health_taint(device)) is not None:
                found[key] = why
    return found
