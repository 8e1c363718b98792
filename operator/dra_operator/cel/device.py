"""A device as DRA CEL selectors see it: driver, attributes and capacity grouped by domain, bound once.

Attribute and capacity names without a domain (`memory`) belong to the driver's domain, as in Kubernetes:
`device.attributes["driver.example.com"].memory`. Values become CEL values once, at construction. The cel-cpp
activation is made per evaluation and dropped with it: cel-cpp converts the maps into the activation's arena
at its first evaluation, about 9.5 KiB per device that a kept activation would hold for the device's life
(450 MiB at 40,000 devices), while making one costs less than that memory's allocation (bench/cel.py). The
allocator caches results per slice generation, so a device is bound once per expression. Instances are
immutable in content; the allocator caches them per slice generation.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

from dra_operator.api.quantity import Quantity
from dra_operator.api.semver import Semver
from dra_operator.api.sharing import SharedMap
from dra_operator.cel.values import quantity_to_message, semver_to_message

if TYPE_CHECKING:
    from dra_operator.api.resource import Device, DeviceAttribute, DeviceCapacity

__all__ = ["AttributeValue", "CelDevice", "split_qualified_name"]

AttributeValue = int | bool | str | Semver
V = TypeVar("V")

_EMPTY: dict[str, Any] = {}


# Devices of a slice share most values (every GPU has 64Gi), so conversions are cached. The messages are
# only ever read: activations copy them into cel-cpp values.
@lru_cache(maxsize=4096)
def _quantity_value(quantity: Quantity) -> Any:
    return quantity_to_message(quantity)


@lru_cache(maxsize=4096)
def _version_value(text: str) -> Any:
    return semver_to_message(Semver.parse(text))


def split_qualified_name(name: str, default_domain: str) -> tuple[str, str]:
    """(domain, id) of a qualified name; a name without `/` is in the default (driver's) domain."""
    domain, slash, ident = name.partition("/")
    if not slash:
        return default_domain, name
    return domain, ident


Bound = tuple[dict[str, dict[str, Any]], str | None]  # CEL maps by domain, and the first binding error


def _bind_attributes(driver: str, source: Mapping[str, DeviceAttribute]) -> Bound:
    attributes: dict[str, dict[str, Any]] = {}
    error = None
    for name, attribute in source.items():
        domain, ident = split_qualified_name(name, driver)
        value: Any
        if attribute.int_value is not None:
            value = attribute.int_value
        elif attribute.bool_value is not None:
            value = attribute.bool_value
        elif attribute.string is not None:
            value = attribute.string
        elif attribute.version is not None:
            try:
                value = _version_value(attribute.version)
            except ValueError as err:
                error = error or f"attribute {name}: parse semantic version: {err}"
                continue
        else:
            error = error or f"attribute {name}: unsupported attribute value"
            continue
        attributes.setdefault(domain, {})[ident] = value
    return attributes, error


def _bind_capacity(driver: str, source: Mapping[str, DeviceCapacity]) -> Bound:
    capacity: dict[str, dict[str, Any]] = {}
    for name, entry in source.items():
        domain, ident = split_qualified_name(name, driver)
        capacity.setdefault(domain, {})[ident] = _quantity_value(entry.value)
    return capacity, None


class _BoundBySource:
    """The CEL form of each shared attribute or capacity map (api.sharing), per driver: devices that share a
    map share its CEL form, which is only read (activations copy it). 853 bytes per device were bound apart
    at 40,000 devices (32.5 MiB). An entry leaves with its map; maps that are not shared are bound apart."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, int], Bound] = {}

    def get(
        self, driver: str, source: Mapping[str, V] | None, bind: Callable[[str, Mapping[str, V]], Bound]
    ) -> Bound:
        if not source:
            return {}, None
        if not isinstance(source, SharedMap):
            return bind(driver, source)
        key = (driver, id(source))
        found = self._held.get(key)
        if found is None:
            found = self._held[key] = bind(driver, source)
            weakref.finalize(source, self._held.pop, key, None)  # the id stays valid while the map lives
        return found

    def __len__(self) -> int:
        return len(self._held)


_BOUND = _BoundBySource()


class CelDevice:
    """The `device` variable for one device. Build with `from_device` (API model) or `from_plain` (tests)."""

    __slots__ = (
        "_attributes",
        "_capacity",
        "_error",
        "allow_multiple_allocations",
        "driver",
        "name",
    )

    name: str
    driver: str
    allow_multiple_allocations: bool
    _attributes: dict[str, dict[str, Any]]
    _capacity: dict[str, dict[str, Any]]
    _error: str | None

    def __init__(
        self,
        name: str,
        driver: str,
        attributes: dict[str, dict[str, Any]],
        capacity: dict[str, dict[str, Any]],
        error: str | None = None,
        allow_multiple_allocations: bool = False,
    ) -> None:
        """Takes CEL-ready maps (values already converted); use the factories instead."""
        self.name = name
        self.driver = driver
        self._attributes = attributes
        self._capacity = capacity
        self._error = error
        self.allow_multiple_allocations = allow_multiple_allocations

    @classmethod
    def from_device(cls, driver: str, device: Device) -> CelDevice:
        """Binds an api.resource.Device of a slice of `driver`."""
        attributes, error = _BOUND.get(driver, device.attributes, _bind_attributes)
        capacity, _ = _BOUND.get(driver, device.capacity, _bind_capacity)
        multiple = bool(device.allow_multiple_allocations)
        return cls(device.name, driver, attributes, capacity, error, multiple)

    @classmethod
    def from_plain(
        cls,
        driver: str,
        attributes: Mapping[str, AttributeValue] | None = None,
        capacity: Mapping[str, Quantity | str | int] | None = None,
        name: str = "device",
        allow_multiple_allocations: bool = False,
    ) -> CelDevice:
        """Binds plain data: attributes int/bool/str (a Semver for a version), capacities as quantities."""
        bound_attributes: dict[str, dict[str, Any]] = {}
        for key, value in (attributes or {}).items():
            domain, ident = split_qualified_name(key, driver)
            bound = semver_to_message(value) if isinstance(value, Semver) else value
            bound_attributes.setdefault(domain, {})[ident] = bound
        bound_capacity: dict[str, dict[str, Any]] = {}
        for key, amount in (capacity or {}).items():
            domain, ident = split_qualified_name(key, driver)
            bound_capacity.setdefault(domain, {})[ident] = _quantity_value(Quantity.parse(amount))
        return cls(name, driver, bound_attributes, bound_capacity, None, allow_multiple_allocations)

    @property
    def binding_error(self) -> str | None:
        """Why this device cannot be offered to CEL at all (an unparsable version attribute), if so."""
        return self._error

    def activation(self, env: Any, domains: frozenset[str]) -> Any:
        """A fresh cel-cpp activation for selectors that index `domains`, for one evaluation: drop it after
        (see the module docstring)."""
        # Kubernetes looks an unknown domain up as an empty map; cel-cpp maps have no default, so the domains
        # the expression indexes (and the driver's) are added as empty maps where absent.
        wanted = domains | {self.driver}
        device = {
            "driver": self.driver,
            "attributes": {**dict.fromkeys(wanted, _EMPTY), **self._attributes},
            "capacity": {**dict.fromkeys(wanted, _EMPTY), **self._capacity},
            # Kubernetes offers it only with DRAConsumableCapacity; false is what an unset field means.
            "allowMultipleAllocations": self.allow_multiple_allocations,
        }
        return env.Activation({"device": device})

    def __repr__(self) -> str:
        return f"CelDevice({self.name!r}, driver={self.driver!r})"
