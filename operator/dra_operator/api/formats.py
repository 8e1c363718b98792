"""String formats of resource.k8s.io/v1 (names, qualified names, quantities) as annotated pydantic types.

Each format is checked in Python with a message a user can act on, and carries a `Format` marker that the
CRD generator turns into `pattern` / `maxLength` (or `x-kubernetes-int-or-string`), so the apiserver enforces
the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

from dra_operator.api.quantity import QUANTITY_PATTERN, Quantity


@dataclass(frozen=True)
class Format:
    """Schema facts for a string field: what the CRD generator emits besides `type: string`."""

    pattern: str | None = None
    max_length: int | None = None
    int_or_string: bool = False


_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = rf"{_LABEL}(\.{_LABEL})*"
_C_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"

DNS_LABEL_RE = re.compile(rf"^{_LABEL}$")
DNS_SUBDOMAIN_RE = re.compile(rf"^{_SUBDOMAIN}$")
C_IDENTIFIER_RE = re.compile(rf"^{_C_IDENT}$")
DNS_LABEL_MAX = 63
DNS_SUBDOMAIN_MAX = 253
DRIVER_NAME_MAX = 63
POOL_NAME_MAX = 253
ATTRIBUTE_ID_MAX = 32
ATTRIBUTE_DOMAIN_MAX = 63
# A qualified name is at most a 63-character domain, a slash and a 32-character identifier.
QUALIFIED_NAME_MAX = ATTRIBUTE_DOMAIN_MAX + 1 + ATTRIBUTE_ID_MAX
CEL_EXPRESSION_MAX = 10 * 1024
STRING_ATTRIBUTE_MAX = 64
VERSION_ATTRIBUTE_MAX = 64


@lru_cache(maxsize=16384)
def dns_label_error(value: str) -> str | None:
    """Why `value` is not a DNS label (RFC 1123), or None when it is one."""
    if not value:
        return "must not be empty"
    if len(value) > DNS_LABEL_MAX:
        return f"must be no more than {DNS_LABEL_MAX} characters"
    if not DNS_LABEL_RE.match(value):
        return "must be a DNS label: lowercase letters, digits and '-', starting and ending alphanumeric"
    return None


@lru_cache(maxsize=16384)
def dns_subdomain_error(value: str) -> str | None:
    """Why `value` is not a DNS subdomain (RFC 1123), or None when it is one."""
    if not value:
        return "must not be empty"
    if len(value) > DNS_SUBDOMAIN_MAX:
        return f"must be no more than {DNS_SUBDOMAIN_MAX} characters"
    if not DNS_SUBDOMAIN_RE.match(value):
        return "must be a DNS subdomain: lowercase letters, digits, '-' and '.', alphanumeric at both ends"
    return None


@lru_cache(maxsize=16384)
def driver_name_error(value: str) -> str | None:
    """Driver names: a DNS subdomain of at most 63 characters (CSI driver name rules).

    Upper case is accepted, as kube-apiserver 1.36 does (it only warns that names should be lower case).
    """
    if len(value) > DRIVER_NAME_MAX:
        return f"driver name must be no more than {DRIVER_NAME_MAX} characters"
    problem = dns_subdomain_error(value.lower())
    return None if problem is None else f"driver name {problem}"


@lru_cache(maxsize=16384)
def pool_name_error(value: str) -> str | None:
    """Pool names are DNS subdomains separated by '/', at most 253 characters in all."""
    if not value:
        return "must not be empty"
    if len(value) > POOL_NAME_MAX:
        return f"must be no more than {POOL_NAME_MAX} characters"
    for part in value.split("/"):
        problem = dns_subdomain_error(part)
        if problem is not None:
            return f"each '/'-separated part of a pool name {problem} (got {part!r})"
    return None


@lru_cache(maxsize=16384)
def qualified_name_error(value: str, *, require_domain: bool = False) -> str | None:
    """Attribute and capacity names: a C identifier (<= 32) with an optional `domain/` prefix (<= 63)."""
    domain, slash, ident = value.rpartition("/")
    if not slash:
        if require_domain:
            return "must be a fully qualified name: <domain>/<name>, e.g. 'gpu.nvidia.com/uuid'"
    else:
        if not domain:
            return "the domain before '/' must not be empty"
        if len(domain) > ATTRIBUTE_DOMAIN_MAX:
            return f"the domain must be no more than {ATTRIBUTE_DOMAIN_MAX} characters"
        if not DNS_SUBDOMAIN_RE.match(domain):
            return f"the domain {domain!r} must be a DNS subdomain"
    if not ident:
        return "the name must not be empty"
    if len(ident) > ATTRIBUTE_ID_MAX:
        return f"the name {ident!r} must be no more than {ATTRIBUTE_ID_MAX} characters"
    if not C_IDENTIFIER_RE.match(ident):
        return (
            f"the name {ident!r} must be a C identifier (letters, digits and '_', not starting with a digit)"
        )
    return None


# The checks are pure functions of short strings and run for every name of every device: cached.
def _checker(check: Any) -> AfterValidator:
    def validate(value: str) -> str:
        problem = check(value)
        if problem is not None:
            raise ValueError(problem if repr(value) in problem else f"{problem}: {value!r}")
        return value

    return AfterValidator(validate)


def _check_fully_qualified(value: str) -> str | None:
    return qualified_name_error(value, require_domain=True)


# Patterns for the CRD schema mirror the Python checks (length limits are separate maxLength facts).
_QUALIFIED_PATTERN = rf"^({_SUBDOMAIN}/)?{_C_IDENT}$"
_FULLY_QUALIFIED_PATTERN = rf"^{_SUBDOMAIN}/{_C_IDENT}$"
_POOL_PATTERN = rf"^{_SUBDOMAIN}(/{_SUBDOMAIN})*$"

DNSLabel = Annotated[str, _checker(dns_label_error), Format(pattern=f"^{_LABEL}$", max_length=DNS_LABEL_MAX)]
DNSSubdomain = Annotated[
    str, _checker(dns_subdomain_error), Format(pattern=f"^{_SUBDOMAIN}$", max_length=DNS_SUBDOMAIN_MAX)
]
_DRIVER_PATTERN = "^" + _SUBDOMAIN.replace("a-z0-9", "A-Za-z0-9") + "$"
DriverName = Annotated[
    str, _checker(driver_name_error), Format(pattern=_DRIVER_PATTERN, max_length=DRIVER_NAME_MAX)
]
PoolName = Annotated[str, _checker(pool_name_error), Format(pattern=_POOL_PATTERN, max_length=POOL_NAME_MAX)]
QualifiedName = Annotated[
    str, _checker(qualified_name_error), Format(pattern=_QUALIFIED_PATTERN, max_length=QUALIFIED_NAME_MAX)
]
FullyQualifiedName = Annotated[
    str,
    _checker(_check_fully_qualified),
    Format(pattern=_FULLY_QUALIFIED_PATTERN, max_length=QUALIFIED_NAME_MAX),
]


def _check_request_reference(value: str) -> str | None:
    """A reference to a request is `<request>` or `<request>/<subrequest>`, each a DNS label."""
    parts = value.split("/")
    if len(parts) > 2:
        return "must be <request> or <request>/<subrequest>"
    for part in parts:
        problem = dns_label_error(part)
        if problem is not None:
            return f"each part of a request reference {problem}"
    return None


RequestReference = Annotated[
    str,
    _checker(_check_request_reference),
    Format(pattern=f"^{_LABEL}(/{_LABEL})?$", max_length=2 * DNS_LABEL_MAX + 1),
]


@lru_cache(maxsize=4096)
def _parse_quantity(text: str) -> Quantity:
    # Quantities are immutable, and slices repeat the same few capacities on every device.
    return Quantity.parse(text)


def _to_quantity(value: Any) -> Quantity:
    if isinstance(value, Quantity):
        return value
    if isinstance(value, bool):
        raise ValueError(f"a quantity must be a string or a number, not {value!r}")
    if isinstance(value, int):
        return Quantity.parse(value)
    if isinstance(value, float | Fraction):
        # YAML turns `1.5` into a float; its shortest repr is what the user wrote.
        return Quantity.parse(repr(value) if isinstance(value, float) else str(value))
    if isinstance(value, str):
        return _parse_quantity(value)
    raise ValueError(f"a quantity must be a string or a number, not {type(value).__name__}")


# Quantities are parsed once at load time into exact values; they serialize to Kubernetes' canonical string.
QuantityValue = Annotated[
    Quantity,
    BeforeValidator(_to_quantity),
    PlainSerializer(str, return_type=str),
    Format(pattern=QUANTITY_PATTERN, int_or_string=True),
]
