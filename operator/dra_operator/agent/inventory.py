"""A node's device inventory as plain data: what a backend reads, before it becomes a ResourceSlice.

Backends (NVML, simulated) produce `DeviceInfo` values; `slices.py` turns them into ResourceSlice objects.
Keeping this layer free of pydantic models and of any client lets both sides be tested with plain tables.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

# Kubernetes DRA limits for one device (resource.k8s.io/v1): names are DNS labels, attribute and capacity
# names are C identifiers (optionally qualified by a DNS-subdomain domain); strings hold <= 64 characters.
DEVICE_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
QUALIFIED_NAME_RE = re.compile(
    r"^(?:[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z_][A-Za-z0-9_]{0,63}$"
)
MAX_STRING_ATTRIBUTE = 64


@dataclass(frozen=True, order=True)
class Version:
    """An attribute value published as `version` (semver 2.0.0) rather than `string`."""

    text: str

    @staticmethod
    def coerce(raw: str) -> Version:
        """Turn what drivers report ("580.159.04", "9.0", "13.0") into semver ("580.159.4", "9.0.0", ...).

        Leading zeros are dropped and missing parts become zero, as the NVIDIA DRA driver does (it parses
        these strings leniently and publishes the normalised form). Anything after the numbers is refused.
        """
        match = re.fullmatch(r"\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?\s*", raw)
        if match is None:
            raise ValueError(f"not a version: {raw!r} (expected MAJOR[.MINOR[.PATCH]])")
        parts = [int(p) if p is not None else 0 for p in match.groups()]
        return Version(".".join(str(p) for p in parts))

    def __str__(self) -> str:
        return self.text


AttributeValue: TypeAlias = bool | int | str | Version
TaintEffect = Literal["NoSchedule", "NoExecute", "None"]


@dataclass(frozen=True)
class Taint:
    """A device taint (resource.k8s.io/v1 DeviceTaint without timeAdded, which the API server may set)."""

    key: str
    effect: TaintEffect
    value: str | None = None


@dataclass(frozen=True)
class DeviceInfo:
    """One allocatable device as a backend sees it.

    `capacity` values are Kubernetes quantity strings or integers ("64Gi", 85899345920).
    `locator` is backend-private identity (for NVML: parent UUID, GPU-instance id, compute-instance id) used
    to map health events to devices; it is never published.
    """

    name: str
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    capacity: Mapping[str, str | int] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    locator: tuple[str, int, int] | None = None

    def problems(self) -> list[str]:
        """What Kubernetes would reject in this device, as messages naming the device and the field."""
        found: list[str] = []
        if not DEVICE_NAME_RE.match(self.name):
            found.append(
                f"device {self.name!r}: name must be a DNS label (lowercase letters, digits, '-', <= 63)"
            )
        for key, value in self.attributes.items():
            if not QUALIFIED_NAME_RE.match(key):
                found.append(
                    f"device {self.name!r}: attribute name {key!r} is not a (qualified) C identifier"
                )
            if isinstance(value, str) and len(value) > MAX_STRING_ATTRIBUTE:
                found.append(
                    f"device {self.name!r}: attribute {key!r} has more than {MAX_STRING_ATTRIBUTE} characters"
                )
        for key in self.capacity:
            if not QUALIFIED_NAME_RE.match(key):
                found.append(f"device {self.name!r}: capacity name {key!r} is not a (qualified) C identifier")
        if len(self.attributes) + len(self.capacity) > 32:
            found.append(f"device {self.name!r}: more than 32 attributes and capacities together")
        return found


@dataclass(frozen=True)
class Inventory:
    """Everything one backend read found on one node, for one driver (= one pool)."""

    driver: str
    devices: tuple[DeviceInfo, ...]
    # Devices the backend could not read (index or name, reason): logged and left out of the slice.
    skipped: tuple[tuple[str, str], ...] = ()

    def by_name(self) -> dict[str, DeviceInfo]:
        return {d.name: d for d in self.devices}


def check_unique(devices: Iterable[DeviceInfo]) -> None:
    """Raise ValueError if two devices share a name (Kubernetes marks such a pool invalid)."""
    seen: set[str] = set()
    for device in devices:
        if device.name in seen:
            raise ValueError(f"device name {device.name!r} appears twice")
        seen.add(device.name)
