"""The operator's view of the cluster: Kopf indexes (filled by watches) overlaid with our own writes.

Kopf indexes lag our writes by one watch event. The allocator must never see a device as free because the
claim we just allocated has not come back through the watch yet, so every object we write is kept here until
the index holds the same or a newer resourceVersion (etcd revisions, compared as integers).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

Json = dict[str, Any]
Key = tuple[str, str]  # (namespace or "", name)

#: Kopf index ids (the kwarg names handlers receive them under).
CLASSES, SLICES, CLAIMS, TEMPLATES, PODS, NODES = (
    "dra_classes",
    "dra_slices",
    "dra_claims",
    "dra_templates",
    "dra_pods",
    "dra_nodes",
)
INDEXES = (CLASSES, SLICES, CLAIMS, TEMPLATES, PODS, NODES)


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _rv(obj: Mapping[str, Any] | None) -> int:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


class State:
    """Read access to indexed objects by kind, with our fresher writes on top."""

    def __init__(self) -> None:
        self.indexes: Mapping[str, Any] | None = None
        # kind -> key -> our last written object, or None for "we deleted it" (with the rv it had then)
        self._overlay: dict[str, dict[Key, tuple[int, Json | None]]] = {name: {} for name in INDEXES}

    @property
    def bound(self) -> bool:
        return self.indexes is not None

    def bind(self, indexes: Mapping[str, Any]) -> None:
        """Keep Kopf's index objects (they are long-lived; handlers get the same ones every time)."""
        if self.indexes is None and all(name in indexes for name in INDEXES):
            self.indexes = {name: indexes[name] for name in INDEXES}

    def _indexed(self, kind: str, key: Key) -> Json | None:
        if self.indexes is None:
            return None
        index = self.indexes[kind]
        if key not in index:
            return None
        for value in index[key]:
            return dict(value)
        return None

    def get(self, kind: str, key: Key) -> Json | None:
        indexed = self._indexed(kind, key)
        written = self._overlay[kind].get(key)
        if written is None:
            return indexed
        rv, obj = written
        if indexed is not None and _rv(indexed) > rv:
            del self._overlay[kind][key]  # the watch caught up with (and went past) our write
            return indexed
        return obj

    def all(self, kind: str, ordered: bool = False) -> Iterator[Json]:
        """Every object of `kind`; by (namespace, name) when `ordered` (a sort costs n log n per call, which
        per-Pod scans over thousands of claims cannot afford)."""
        keys: set[Key] = set(self._overlay[kind])
        if self.indexes is not None:
            keys.update(self.indexes[kind])
        for key in sorted(keys) if ordered else keys:
            obj = self.get(kind, key)
            if obj is not None:
                yield obj

    def wrote(self, kind: str, obj: Json) -> None:
        """Remember an object as the API server returned it from our write."""
        self._overlay[kind][key_of(obj)] = (_rv(obj), obj)

    def deleted(self, kind: str, obj: Json) -> None:
        """Remember that we deleted an object (it vanishes from reads at once)."""
        self._overlay[kind][key_of(obj)] = (_rv(obj), None)

    def forget(self, kind: str, key: Key) -> None:
        """The watch reported the object gone: drop any overlay entry too."""
        self._overlay[kind].pop(key, None)
