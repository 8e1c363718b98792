"""What the admission process must know of the operator's caches, sent to it as it changes (see
dra_operator.admission.mirror): the extended resource names our DeviceClasses declare, that the caches are
filled, and, on clusters with built-in DRA, the names of our ResourceClaims and ResourceClaimTemplates."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from dra_operator.admission import mirror
from dra_operator.admission.mutation import declared_extended_resources
from dra_operator.operator.state import CLAIMS, CLASSES, TEMPLATES, Key, State, key_of

Json = dict[str, Any]

#: State's kinds -> the mirror's.
_MIRRORED = {CLAIMS: mirror.CLAIMS, TEMPLATES: mirror.TEMPLATES}


class AdmissionFeed:
    """Runs on the main loop; `send` hands one message to the admission process (dropped while none runs:
    `snapshot` is what a fresh one is sent first)."""

    def __init__(self, state: State, builtin_dra: bool = False) -> None:
        self._state = state
        self.builtin_dra = builtin_dra
        self.send: Callable[[Json], None] = lambda message: None
        self._warm = False
        self._extended: Mapping[str, str] = MappingProxyType({})

    def extended_resources(self) -> Mapping[str, str]:
        """Extended resource name -> the DeviceClass that declares it, as last published."""
        return self._extended

    def snapshot(self) -> list[Json]:
        """Every message a fresh admission process needs, in order."""
        messages = [mirror.reset(), mirror.extended(self._extended)]
        if self._warm:
            if self.builtin_dra:
                for kind, theirs in _MIRRORED.items():
                    messages.append(mirror.present(theirs, (key_of(obj) for obj in self._state.all(kind))))
            messages.append(mirror.ready())
        return messages

    def warm(self) -> None:
        """The caches are filled: publish the names, then let reviews through."""
        self._warm = True
        self._extended = self._declared()
        for message in self.snapshot()[1:]:  # no reset: only the extended names were sent before
            self.send(message)

    def classes_changed(self) -> None:
        self._extended = self._declared()
        self.send(mirror.extended(self._extended))

    def _declared(self) -> Mapping[str, str]:
        # Replaced whole, never changed in place: whoever holds the last one keeps a consistent view.
        return MappingProxyType(declared_extended_resources(self._state.all(CLASSES)))

    def seen(self, kind: str, key: Key, exists: bool) -> None:
        """A watch event of a claim or template (before the caches are filled the snapshot covers it)."""
        if self._warm and self.builtin_dra and kind in _MIRRORED:
            self.send((mirror.present if exists else mirror.absent)(_MIRRORED[kind], [key]))
