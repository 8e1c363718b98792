"""What the admission thread reads of the operator's caches: single-key lookups that neither iterate nor
change the shared dictionaries, and the extended resource names, which the main loop publishes whenever a
DeviceClass changes (an iteration over the classes from the admission thread could meet a change midway)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from dra_operator.admission.mutation import declared_extended_resources
from dra_operator.operator.state import CLAIMS, CLASSES, TEMPLATES, State


class StateCaches:
    """`dra_operator.admission.webhook.Caches` over the operator's `State`."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._extended: Mapping[str, str] = MappingProxyType({})

    def claim_exists(self, namespace: str, name: str) -> bool:
        return self._state.exists(CLAIMS, (namespace, name))

    def template_exists(self, namespace: str, name: str) -> bool:
        return self._state.exists(TEMPLATES, (namespace, name))

    def extended_resources(self) -> Mapping[str, str]:
        return self._extended  # replaced whole, never changed in place: a reader holds one consistent view

    def classes_changed(self) -> None:
        """Main loop only: publish the names the classes declare now."""
        self._extended = MappingProxyType(declared_extended_resources(self._state.all(CLASSES)))
