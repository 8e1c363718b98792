"""Claim constraints (matchAttribute, distinctAttribute) as the search adds and removes devices.

Both follow Kubernetes' structured allocator: the attribute is looked up by its fully qualified name, or by
the bare name when the domain is the device's driver; a device without it is rejected. matchAttribute compares
values of the same type (another type rejects); distinctAttribute remembers one value per request name and
rejects a value equal to a remembered one, exactly as the 1.36 allocator does (so two devices of one request
are only compared with the value the request remembered last, and removing a device forgets the request's
value).
"""

from __future__ import annotations

from collections.abc import Mapping

from dra_operator.api.resource import DeviceAttribute, DeviceConstraint

TypedValue = tuple[str, object]


def lookup_attribute(
    attributes: Mapping[str, DeviceAttribute], driver: str, name: str
) -> DeviceAttribute | None:
    found = attributes.get(name)
    if found is not None:
        return found
    domain, slash, ident = name.partition("/")
    if not slash or domain != driver:
        return None
    return attributes.get(ident)


def typed_value(attribute: DeviceAttribute | None) -> TypedValue | None:
    """The value with its type, so that equal text of different types never compares equal."""
    if attribute is None:
        return None
    if attribute.int_value is not None:
        return ("int", attribute.int_value)
    if attribute.bool_value is not None:
        return ("bool", attribute.bool_value)
    if attribute.string is not None:
        return ("string", attribute.string)
    if attribute.version is not None:
        # semver 2.0.0 strings are minimal, so equal versions are equal strings.
        return ("version", attribute.version)
    return None


class Constraint:
    """State of one constraint during one search."""

    def __init__(self, spec: DeviceConstraint) -> None:
        self.requests = frozenset(spec.requests or ())
        self.distinct = spec.distinct_attribute is not None
        self.attribute = spec.distinct_attribute or spec.match_attribute or ""
        self._count = 0
        self._value: TypedValue | None = None
        self._by_request: dict[str, TypedValue] = {}

    def describe(self) -> str:
        kind = "distinctAttribute" if self.distinct else "matchAttribute"
        scope = f" over requests {', '.join(sorted(self.requests))}" if self.requests else ""
        return f"{kind} {self.attribute}{scope}"

    def applies(self, request: str, subrequest: str) -> bool:
        if not self.requests:
            return True
        if request in self.requests:
            return True
        return bool(subrequest) and f"{request}/{subrequest}" in self.requests

    def add(
        self, request: str, subrequest: str, driver: str, attributes: Mapping[str, DeviceAttribute]
    ) -> bool:
        if not self.applies(request, subrequest):
            return True
        value = typed_value(lookup_attribute(attributes, driver, self.attribute))
        if value is None:
            return False
        if self.distinct:
            if self._count and value in self._by_request.values():
                return False
            self._by_request[request] = value
        elif self._count == 0:
            self._value = value
        elif value != self._value:
            return False
        self._count += 1
        return True

    def remove(self, request: str, subrequest: str) -> None:
        if not self.applies(request, subrequest):
            return
        if self.distinct:
            self._by_request.pop(request, None)
        self._count -= 1
