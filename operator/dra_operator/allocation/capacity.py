"""Consumable capacity (DRAConsumableCapacity, beta and on in 1.36): what a request consumes of a device.

A request may ask for amounts of a device's capacities (`capacity.requests`); a capacity it does not name
is consumed by its default or in full. The amount is rounded up by the capacity's request policy and must
fit, with what allocated and in-flight claims already consume, within the capacity's value. Devices with
`allowMultipleAllocations` can be shared by several claims this way; others serve one claim at a time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction

from dra_operator.api.quantity import Quantity
from dra_operator.api.resource import CapacityRequestPolicy, DeviceCapacity

Amounts = dict[str, Fraction]
"""Capacity name -> amount."""


def _value(quantity: Quantity) -> Fraction:
    return quantity.value


def _round_up_range(requested: Fraction, policy: CapacityRequestPolicy) -> Fraction:
    valid = policy.valid_range
    assert valid is not None
    low = _value(valid.min)
    if requested < low:
        return low
    if valid.step is None:
        return requested
    # Kubernetes computes in integers here (Quantity.Value() rounds up).
    step = math.ceil(_value(valid.step))
    base = math.ceil(low)
    added = math.ceil(requested) - base
    steps = added // step + (1 if added % step else 0)
    return Fraction(base + step * steps)


def consumed(requested: Quantity | None, capacity: DeviceCapacity) -> Fraction:
    """How much of one capacity a request consumes."""
    policy = capacity.request_policy
    if requested is None:
        if policy is not None and policy.default is not None:
            return _value(policy.default)
        return _value(capacity.value)
    amount = _value(requested)
    if policy is None:
        return amount
    if policy.valid_range is not None:
        return _round_up_range(amount, policy)
    if policy.valid_values:
        for valid in policy.valid_values:
            if amount <= _value(valid):
                return _value(valid)
    return amount


def violates(amount: Fraction, policy: CapacityRequestPolicy | None) -> bool:
    if policy is None:
        return False
    if policy.default is not None and amount == _value(policy.default):
        return False
    if policy.valid_range is not None:
        valid = policy.valid_range
        if valid.max is not None and amount > _value(valid.max):
            return True
        if valid.step is not None:
            step = math.ceil(_value(valid.step))
            return (math.ceil(amount) - math.ceil(_value(valid.min))) % step != 0
        return False
    if policy.valid_values:
        return all(amount != _value(valid) for valid in policy.valid_values)
    return False


def consumption(requests: Mapping[str, Quantity] | None, capacities: Mapping[str, DeviceCapacity]) -> Amounts:
    """What a request consumes of every capacity of a device."""
    return {name: consumed((requests or {}).get(name), capacity) for name, capacity in capacities.items()}


def fits(
    requests: Mapping[str, Quantity] | None,
    capacities: Mapping[str, DeviceCapacity],
    used: Mapping[str, Fraction] | None = None,
) -> bool:
    """Whether the request fits the device, beside `used` (what others consume already): every requested
    capacity exists, no amount violates its policy, and no capacity overflows."""
    if requests and any(name not in capacities for name in requests):
        return False
    for name, capacity in capacities.items():
        amount = consumed(requests.get(name) if requests else None, capacity)
        if violates(amount, capacity.request_policy):
            return False
        if amount + (used or {}).get(name, Fraction(0)) > _value(capacity.value):
            return False
    return True


def as_quantity(amount: Fraction, *candidates: Quantity | None) -> Quantity:
    """The amount as a Quantity, in the form of the first candidate with that value (as Kubernetes copies the
    requested, default or full quantity), else as an integer in binary form."""
    for candidate in candidates:
        if candidate is not None and candidate.value == amount:
            return candidate
    return Quantity.from_int(math.ceil(amount), "BinarySI")
