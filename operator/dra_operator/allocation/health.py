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

from dra_operator.allocation import taints
from dra_operator.allocation.usage import DeviceKey, allocation_results
from dra_operator.api.resource import Device, ResourceSlice

Json = Mapping[str, Any]
HEALTH_TAINT_SUFFIXES = ("/xid", "/gpu-lost")


CurrentDevices = dict[tuple[str, str], dict[str, Device]]


def current_devices(slices: Iterable[ResourceSlice]) -> CurrentDevices:
    """(driver, pool) -> device name -> device, from each pool's highest-generation slices."""
    devices: CurrentDevices = {}
    for (driver, pool, name), _, device in taints.current_devices(slices):
        devices.setdefault((driver, pool), {})[name] = device
    return devices


def _health_taint(device: Device) -> str | None:
    for taint in device.taints or ():
        if taint.key.endswith(HEALTH_TAINT_SUFFIXES) or taint.effect == "NoExecute":
            return f"tainted {taint.key}{'=' + taint.value if taint.value else ''}:{taint.effect}"
    return None


def unhealthy_devices(slices: Iterable[ResourceSlice], claims: Iterable[Json]) -> dict[DeviceKey, str]:
    """Every (driver, pool, device) an allocated claim holds that is unhealthy now -> why."""
    return unhealthy_among(current_devices(slices), claims)


def unhealthy_among(current: CurrentDevices, claims: Iterable[Json]) -> dict[DeviceKey, str]:
    """`unhealthy_devices` with the slices' `current_devices` already gathered (a caller may keep them while
    no slice changed)."""
    found: dict[DeviceKey, str] = {}
    for claim in claims:
        found.update(unhealthy_of(current, claim))
    return found


def unhealthy_of(current: CurrentDevices, claim: Json) -> dict[DeviceKey, str]:
    """The devices one claim's allocation holds that are unhealthy now -> why (see `unhealthy_among`)."""
    found: dict[DeviceKey, str] = {}
    for key, _ in allocation_results(claim):
        device = current.get(key[:2], {}).get(key[2])
        if device is None:
            found[key] = "no longer offered by its ResourceSlice (withdrawn by the node agent, or gone)"
        elif (why := _health_taint(device)) is not None:
            found[key] = why
    return found
