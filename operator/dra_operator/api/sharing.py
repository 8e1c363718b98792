"""Equal parts held once: parsed devices' values and maps, claims' specs, models' sets of given field names,
and the strings of cached objects.

At 5,000 slices x 8 GPUs the parsed slices were the operator's largest item (20 KiB per slice, issue 14),
although most devices of a cluster repeat one another: the same product name, driver version, memory. A
value seen before is answered with the model parsed then (so it is also parsed once), and a device's map
equal to one held already becomes that map. The tables hold their entries weakly: a value leaves with the
last device that uses it, and nothing here grows with the slices that came and went.

Every parsed model also shares the set of field names it was given (`LeanModel`; pydantic keeps one per
model, 200 to 500 bytes, for `exclude_unset` dumps, which nothing here makes): 60,000 sets, 17 MiB, at 5,000
slices. Cached objects hold each key and string once (`interned`).

A claim's spec, which the API server never lets change, is shared whole with equal ones (`shared_tree`):
every claim made from one template, or from one manifest, has the same.

What is shared must not change: the models are only read after validation (the allocator's contract), and a
shared map refuses writes, so a caller that tried would fail loudly rather than change other devices.
"""

from __future__ import annotations

import json
import sys
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, NoReturn, TypeVar

from pydantic import BaseModel

V = TypeVar("V")
Self_ = TypeVar("Self_")


def _read_only(self: object, *args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError(f"a shared {type(self).__name__} is read-only: other objects hold it too")


class _Shared:
    """What the shared containers have in common: a copy is the object itself (it never changes)."""

    __slots__ = ()

    def __copy__(self: Self_) -> Self_:
        return self

    def __deepcopy__(self: Self_, memo: dict[int, Any]) -> Self_:
        return self


class SharedMap(_Shared, dict[str, V]):
    """A read-only dict (weakly referable, so the table does not keep it alive)."""

    __slots__ = ("__weakref__",)
    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return (SharedMap, (dict(self),))

    def __init__(self, items: Mapping[str, V] | None = None) -> None:
        dict.__init__(self, items or {})


class SharedList(_Shared, list[V]):
    """A read-only list, the lists of a shared tree."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = remove = pop = clear = sort = reverse = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return (SharedList, (list(self),))

    def __init__(self, items: Iterable[V] = ()) -> None:
        list.__init__(self, items)


class _CopiedWhenChanged:
    """What the copy-on-write containers have in common: a copy, shallow or deep, is plain JSON that the
    caller may change; the original stays shared and read-only."""

    __slots__ = ()

    def __copy__(self) -> Any:
        return _plain(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return _plain(self)


class CopyOnWriteMap(_CopiedWhenChanged, SharedMap[V]):
    """A read-only dict, shared like SharedMap, whose copies are plain dicts."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (_plain(self),))


class CopyOnWriteList(_CopiedWhenChanged, SharedList[V]):
    """A read-only list of a copy-on-write tree."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (_plain(self),))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {name: _plain(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


#: Each distinct set of given field names, once (a handful per kind; the table never grows with objects).
_FIELD_SETS: dict[frozenset[str], set[str]] = {}


def _held_names(names: set[str]) -> set[str]:
    return _FIELD_SETS.setdefault(frozenset(names), names)


class LeanModel(BaseModel):
    """A model that holds its set of given field names (`model_fields_set`) in common with the models given
    the same ones; setting a field not given yet moves the model to the set with that name added, so the
    shared sets never change."""

    def model_post_init(self, context: Any, /) -> None:
        object.__setattr__(self, "__pydantic_fields_set__", _held_names(self.__pydantic_fields_set__))

    def __setattr__(self, name: str, value: Any) -> None:
        names = self.__pydantic_fields_set__
        if name not in names and name in type(self).model_fields:
            object.__setattr__(self, "__pydantic_fields_set__", _held_names(names | {name}))
        super().__setattr__(name, value)


M = TypeVar("M", bound=BaseModel)


def compacted(model: M) -> M:
    """`model` again, its fields in a dict whose keys it shares with the other compacted models of its class.

    Pydantic gives each model a dict of its own, keys included: 464 bytes for a Device's 12 fields, most of
    them None. An attribute set on a fresh instance goes into the interpreter's key-sharing dict (PEP 412),
    which holds only the values: 168 to 288 bytes for a Device, as its class's shared key table grows. Models
    of 10 fields or fewer gain nothing (pydantic's dict of up to 5 keys takes 184 bytes, up to 10 takes 272):
    an allocation result's six models compacted grew from 1.9 to 2.2 KiB. For a slice's devices, kept by the
    ten thousand: 13 MiB less at 40,000 devices (issue 14). The copy is shallow and equal to the model; make
    it in the parent's field validator, as pydantic's `__init__` keeps its own instance."""
    kind = type(model)
    copy = kind.__new__(kind)
    for name, value in model.__dict__.items():
        object.__setattr__(copy, name, value)
    for name in ("__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__"):
        object.__setattr__(copy, name, getattr(model, name))
    return copy


class Table:
    """Values by a hashable key of their JSON form, held weakly."""

    def __init__(self) -> None:
        self._held: weakref.WeakValueDictionary[Hashable, Any] = weakref.WeakValueDictionary()

    def get(self, key: Hashable) -> Any | None:
        return self._held.get(key)

    def keep(self, key: Hashable, value: V) -> V:
        self._held[key] = value
        return value

    def __len__(self) -> int:
        return len(self._held)

    def parsed(self, data: Any, fields: frozenset[str], parse: Callable[[Any], V]) -> V:
        """`parse(data)`, or the value held for equal JSON input (see `scalar_key`)."""
        key = scalar_key(data, fields)
        if key is None:
            return parse(data)
        found: V | None = self._held.get(key)
        return found if found is not None else self.keep(key, parse(data))


def scalar_key(data: Any, fields: frozenset[str]) -> Hashable | None:
    """A key for JSON input of one scalar field named in `fields` (`{"string": "gpu"}`), else None: other
    input is parsed as usual, not shared. The value's type is part of the key (1 and true are equal in
    Python, not in JSON)."""
    if not isinstance(data, dict) or len(data) != 1:
        return None
    ((name, value),) = data.items()
    if name not in fields or type(value) not in (str, int, bool):
        return None
    return (name, type(value), value)


MAPS = Table()


def shared_map(values: dict[str, V] | None) -> dict[str, V] | None:
    """`values`, or an equal map held already. Equal means the same keys naming the same value objects, so
    only maps of shared values are shared (a map of values parsed apart stays apart)."""
    return _held_map(MAPS, values) if values else values


def _held_map(table: Table, values: Mapping[str, V]) -> SharedMap[V]:
    """`values` as a SharedMap: the one `table` holds for the same keys naming the same value objects, or a
    new one it holds from now on."""
    key = tuple((name, id(value)) for name, value in values.items())
    found: SharedMap[V] | None = table.get(key)
    if found is not None and found == values:
        return found
    # The key's ids stay valid while the map lives: it holds its values, and its entry leaves with it.
    return table.keep(key, SharedMap(values))


TREES = Table()


def shared_tree(value: Any) -> Any:
    """A JSON object held read-only, all the way down, and shared with an equal one held already (equal as
    JSON, key order aside); anything but an object is returned as it is. For parts that never change."""
    return _held_tree(TREES, value, SharedMap, SharedList)


COPY_ON_WRITE_TREES = Table()


def copy_on_write_tree(value: Any) -> Any:
    """A JSON object held read-only, all the way down, and shared with an equal one held already, like
    `shared_tree`; but a copy of it (`copy.copy`, `copy.deepcopy`) is plain JSON to change, not the shared
    tree. For parts that many objects repeat and that the operator changes by copy: the status of the claims
    that wait for a Pod (`pending`, two conditions), the same for all written in one second."""
    return _held_tree(COPY_ON_WRITE_TREES, value, CopyOnWriteMap, CopyOnWriteList)


def _held_tree(
    table: Table, value: Any, map_type: type[SharedMap[Any]], list_type: type[SharedList[Any]]
) -> Any:
    if not isinstance(value, dict):
        return value
    key = _tree_key(value)
    found = table.get(key)
    return found if found is not None else table.keep(key, _read_only_tree(value, map_type, list_type))


def _read_only_tree(value: Any, map_type: type[SharedMap[Any]], list_type: type[SharedList[Any]]) -> Any:
    # Its keys and strings interned, as `interned` does for the rest of a cached object (it keeps shared
    # parts as they are).
    if isinstance(value, dict):
        return map_type(
            {_intern(name): _read_only_tree(item, map_type, list_type) for name, item in value.items()}
        )
    if isinstance(value, list):
        return list_type(_read_only_tree(item, map_type, list_type) for item in value)
    return _intern(value) if isinstance(value, str) else value


def _tree_key(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


_intern = sys.intern


def interned(value: Any) -> Any:
    """`value` rebuilt with every dict key and every string interned. The JSON parser makes each object's
    strings anew, per watch event and response: its keys ("metadata", "name", ...) and the values Pods and
    claims repeat (tolerations, env references, conditions, the claims manifest of one template). Held once,
    a cached Pod and its claim take 9.4 KiB instead of 19.7 (issue 14); a string only one object holds costs
    an entry in the interpreter's table, and leaves it with that object. Shared parts (SharedMap, SharedList)
    hold theirs once already and are kept as they are, as are other scalars."""
    kind = type(value)
    if kind is dict:
        return {_intern(key): _interned_item(item) for key, item in value.items()}
    if kind is list:
        return [_interned_item(item) for item in value]
    return _intern(value) if kind is str else value


def _interned_item(item: Any) -> Any:
    # The leaves (mostly strings) without a call of `interned` each: a third of its time.
    kind = type(item)
    if kind is str:
        return _intern(item)
    return interned(item) if kind is dict or kind is list else item
