"""CEL values for Kubernetes quantities and semantic versions: protobuf messages whose equality is semantic.

cel-expr-python cannot carry Python objects as CEL values, so `kubernetes.Quantity` and `kubernetes.Semver`
are protobuf message types built at import time. Each holds a normalized, exact form of its value, so CEL's
message equality (field by field) is exactly Kubernetes' semantic equality: `64Gi == 65536Mi`, and `1.2.3+a ==
1.2.3+b`. What the normalized form loses — a quantity's suffix format, and which of Kubernetes' two internal
representations it had — is invisible in CEL except for `isInteger()`/`asInteger()`, which here answer from
the value (`quantity("1000m").isInteger()` is true here, false in Kubernetes).
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from dra_operator.api.quantity import Quantity
from dra_operator.api.semver import Semver

__all__ = [
    "POOL",
    "QUANTITY_TYPE_NAME",
    "SEMVER_TYPE_NAME",
    "QuantityMessage",
    "SemverMessage",
    "quantity_from_message",
    "quantity_literal",
    "quantity_order",
    "quantity_to_message",
    "semver_from_message",
    "semver_literal",
    "semver_order",
    "semver_to_message",
]

QUANTITY_TYPE_NAME: Final = "kubernetes.Quantity"
SEMVER_TYPE_NAME: Final = "kubernetes.Semver"


def _build_pool() -> Any:
    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="dra_operator/cel/kubernetes_values.proto", package="kubernetes", syntax="proto3"
    )
    quantity = file.message_type.add(name="Quantity")
    # "<mantissa>e<exponent>" with no factor 10 left in the mantissa: one string per value.
    quantity.field.add(name="value", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    # A string whose lexicographic order is the numeric order (see quantity_order): comparisons run in CEL.
    quantity.field.add(name="order", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    semver = file.message_type.add(name="Semver")
    for number, name in enumerate(("major", "minor", "patch"), start=1):
        semver.field.add(name=name, number=number, type=field.TYPE_UINT64, label=field.LABEL_OPTIONAL)
    # Dot-joined identifiers; build metadata is left out because it does not take part in equality.
    semver.field.add(name="prerelease", number=4, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    # A string whose lexicographic order is semver precedence (see semver_order).
    semver.field.add(name="order", number=5, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return pool


POOL: Final[Any] = _build_pool()
QuantityMessage: Final[Any] = message_factory.GetMessageClass(POOL.FindMessageTypeByName(QUANTITY_TYPE_NAME))
SemverMessage: Final[Any] = message_factory.GetMessageClass(POOL.FindMessageTypeByName(SEMVER_TYPE_NAME))


def _quantity_key(quantity: Quantity) -> str:
    return f"{quantity.mantissa}e{quantity.exponent}"


_ORDER_OFFSET: Final = 10**12  # beyond any decimal order of magnitude a quantity can have
_INVERT: Final = str.maketrans("0123456789", "9876543210")


def quantity_order(quantity: Quantity) -> str:
    """A string ordered like the values: sign class, order of magnitude, then the significant digits.

    The value is 0.DIGITS * 10**magnitude. Negative values invert magnitude and digits and end in "~" (above
    every digit) so that a longer digit string, a larger magnitude, sorts first.
    """
    if quantity.mantissa == 0:
        return "1"
    digits = str(abs(quantity.mantissa))
    magnitude = len(digits) + quantity.exponent
    if quantity.mantissa > 0:
        return f"2{magnitude + _ORDER_OFFSET:013d}{digits}"
    return f"0{_ORDER_OFFSET - magnitude:013d}{digits.translate(_INVERT)}~"


def semver_order(version: Semver) -> str:
    """A string ordered like semver precedence: fixed-width numbers, then release above any prerelease.

    Prerelease identifiers: numeric ones as "0" + 20 digits, alphanumeric ones as "1" + text + "!" ("!" sorts
    below every identifier character); the list ends in " ", below both, so a shorter list sorts first.
    """
    text = f"{version.major:020d}{version.minor:020d}{version.patch:020d}"
    if not version.prerelease:
        return text + "1"
    parts = [f"0{p:020d}" if isinstance(p, int) else f"1{p}!" for p in version.prerelease]
    return text + "0" + "".join(parts) + " "


def quantity_to_message(quantity: Quantity) -> Any:
    return QuantityMessage(value=_quantity_key(quantity), order=quantity_order(quantity))


def quantity_from_message(message: Any) -> Quantity:
    mantissa, _, exponent = str(message.value).partition("e")
    return Quantity(int(mantissa or "0"), int(exponent or "0"))


def quantity_literal(quantity: Quantity) -> str:
    """CEL source for a constant quantity (what a literal `quantity("...")` folds into)."""
    return f'{QUANTITY_TYPE_NAME}{{value: "{_quantity_key(quantity)}", order: "{quantity_order(quantity)}"}}'


def semver_to_message(version: Semver) -> Any:
    return SemverMessage(
        major=version.major,
        minor=version.minor,
        patch=version.patch,
        prerelease=".".join(str(p) for p in version.prerelease),
        order=semver_order(version),
    )


def semver_from_message(message: Any) -> Semver:
    prerelease: tuple[int | str, ...] = ()
    if message.prerelease:
        prerelease = tuple(int(p) if p.isdigit() else p for p in str(message.prerelease).split("."))
    return Semver(int(message.major), int(message.minor), int(message.patch), prerelease)


def semver_literal(version: Semver) -> str:
    """CEL source for a constant semantic version (what a literal `semver("...")` folds into)."""
    prerelease = ".".join(str(p) for p in version.prerelease)
    return (
        f"{SEMVER_TYPE_NAME}{{major: {version.major}u, minor: {version.minor}u, patch: {version.patch}u, "
        f'prerelease: "{prerelease}", order: "{semver_order(version)}"}}'
    )
