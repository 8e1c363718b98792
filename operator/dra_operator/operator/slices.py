"""A ResourceSlice as the operator's caches hold it: parsed once, on arrival, with its devices held once.

The caches held each slice's JSON, and the allocator a parsed model of it beside: every device twice (issue
14; 5,000 slices of 8 devices took 27.1 MiB in both forms, 21.6 MiB in this one). A cached slice is now its
JSON whose `spec.devices` is the parsed model's own list of `Device` models, with the model itself beside it:
what reads devices reads the model (`slice_models`), what reads metadata and status reads the JSON. A slice
that does not validate is cached as sent, without a model, and left out of both. A copy of the JSON that
loses the model still parses to the same slice, as pydantic takes a `Device` as itself."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from sys import intern
from typing import Any

from dra_operator.api.resource import InvalidObject, ResourceSlice, load_object
from dra_operator.api.sharing import interned


class CachedSlice(dict[str, Any]):
    """A slice's JSON, and `model`: the slice parsed, whose devices the JSON's `spec.devices` is; None for a
    slice that does not validate, whose JSON then keeps its devices as sent (the allocator says why it is
    left out)."""

    __slots__ = ("model",)

    def __init__(self, obj: Mapping[str, Any], model: ResourceSlice | None) -> None:
        super().__init__(obj)
        self.model = model


def same_spec(obj: Mapping[str, Any], held: Mapping[str, Any] | None) -> bool:
    """Whether `held` (the cached version of `obj`'s object) has the same spec: the same object (uid) at the
    same generation, which the API server moves with every spec change (a status write does not)."""
    if held is None:
        return False
    meta, held_meta = obj.get("metadata") or {}, held.get("metadata") or {}
    generation = meta.get("generation")
    return (
        bool(generation)
        and generation == held_meta.get("generation")
        and meta.get("uid") == held_meta.get("uid")
    )


def cached_slice(obj: Mapping[str, Any], held: Mapping[str, Any] | None = None) -> CachedSlice:
    """`obj` (a slice's JSON, slimmed as the caches keep every object) parsed, each key and string held once
    (api.sharing.interned). A status write's answer, whose spec is `held`'s, keeps `held`'s spec and model:
    no parse, no second copy, and its spec is not walked."""
    if isinstance(held, CachedSlice) and same_spec(obj, held) and "spec" in held:
        rest = {intern(key): interned(item) for key, item in obj.items() if key != "spec"}
        return CachedSlice({**rest, "spec": held["spec"]}, held.model)
    obj = {intern(key): interned(item) for key, item in obj.items()}
    try:
        # Without the status, which changes under an unchanged spec (the free-devices view): the model would
        # hold a stale copy, which nothing reads, for every slice.
        model = load_object({key: item for key, item in obj.items() if key != "status"})
    except InvalidObject:
        return CachedSlice(obj, None)
    if not isinstance(model, ResourceSlice):
        return CachedSlice(obj, None)
    spec = obj.get("spec")
    if isinstance(spec, Mapping) and model.spec.devices is not None:
        obj = {**obj, "spec": {**spec, "devices": model.spec.devices}}
    return CachedSlice(obj, model)


def slice_models(objs: Iterable[Mapping[str, Any]]) -> list[ResourceSlice]:
    """The valid slices among `objs`, parsed: a cached slice's own model; other JSON (the API's, a test's)
    parsed here, leaving out what does not validate."""
    models: list[ResourceSlice] = []
    for obj in objs:
        model: object = None
        if isinstance(obj, CachedSlice):
            model = obj.model
        else:
            try:
                model = load_object(dict(obj))
            except InvalidObject:
                continue
        if isinstance(model, ResourceSlice):
            models.append(model)
    return models
