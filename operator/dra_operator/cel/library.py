"""The CEL environment of DRA selectors: the `device` variable plus Kubernetes' function libraries.

Built on cel-expr-python (cel-cpp). Provided, as in Kubernetes' CEL base environment for resource.k8s.io:
- standard CEL (macros, `has`, `matches`), optional types (`?.`, `[?]`, `orValue`), `cel.bind`;
- strings extension version 2: charAt, indexOf, lastIndexOf, lowerAscii, upperAscii, replace, split,
  substring, trim, join, format, strings.quote;
- Kubernetes' quantity library: quantity, isQuantity, compareTo, isGreaterThan, isLessThan, add, sub,
  asInteger, isInteger, asApproximateFloat, sign;
- Kubernetes' semver library: semver, isSemver (both with the normalize flag), major, minor, patch,
  compareTo, isGreaterThan, isLessThan;
- Kubernetes' lists library: isSorted, sum, min, max (not indexOf/lastIndexOf on lists: the strings
  extension holds those names and cel-expr-python cannot add overloads to them);
- cel-go's lists extension: slice, flatten, distinct, reverse, sort, lists.range (not sortBy, first, last);
- cel-go's sets extension: sets.contains, sets.equivalent, sets.intersects;
- Kubernetes' regex library: find, findAll.

Not provided: two-variable comprehensions (cel-expr-python 0.1.3 lacks them), and libraries that are not
meaningful for device selectors: URLs, IP/CIDR, authz, format.*, image.

Functions implemented here in Python are called back from C++; cel-expr-python 0.1.3 leaks memory on every
such call, which is why the selector layer folds literal constructors and rewrites comparisons (see source).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from itertools import pairwise
from typing import Any, Final

import re2
from cel_expr_python import cel
from cel_expr_python.ext import ext_bindings, ext_optional, ext_strings

from dra_operator.api.quantity import Quantity
from dra_operator.api.semver import Semver
from dra_operator.cel.values import (
    POOL,
    QUANTITY_TYPE_NAME,
    SEMVER_TYPE_NAME,
    QuantityMessage,
    quantity_from_message,
    quantity_to_message,
    semver_to_message,
)

__all__ = ["environment"]

_T: Final[Any] = cel.Type
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def _int64(value: int) -> int:
    """Go's int64(uint64) conversion, as Kubernetes' semver major()/minor()/patch() do."""
    return (value + 2**63) % 2**64 - 2**63


# --------------------------------------------------------------------------------------- quantity and semver


def _quantity(text: str) -> Any:
    return quantity_to_message(Quantity.parse(text))


def _is_quantity(text: str) -> bool:
    return Quantity.is_valid(text)


def _semver(text: str, normalize: bool = False) -> Any:
    return semver_to_message(Semver.parse(text, normalize=normalize))


def _is_semver(text: str, normalize: bool = False) -> bool:
    return Semver.is_valid(text, normalize=normalize)


def _compare(a: Any, b: Any) -> int:
    # Both message types carry an `order` string sorted like their values, so one implementation serves both
    # (cel-expr-python 0.1.3 cannot register two Python overloads of one name whose arguments are messages).
    first, second = str(a.order), str(b.order)
    return (first > second) - (first < second)


def _compare_to(a: Any, b: Any) -> int:
    return _compare(a, b)


def _is_greater_than(a: Any, b: Any) -> bool:
    return _compare(a, b) > 0


def _is_less_than(a: Any, b: Any) -> bool:
    return _compare(a, b) < 0


def _operand(value: Any) -> Quantity:
    if isinstance(value, QuantityMessage):
        return quantity_from_message(value)
    return Quantity.from_int(int(value), "DecimalExponent")


def _add(a: Any, b: Any) -> Any:
    return quantity_to_message(quantity_from_message(a).add(_operand(b)))


def _sub(a: Any, b: Any) -> Any:
    return quantity_to_message(quantity_from_message(a).sub(_operand(b)))


def _as_integer(a: Any) -> int:
    value = quantity_from_message(a).as_int64()
    if value is None:
        raise ValueError("cannot convert value to integer")
    return value


def _is_integer(a: Any) -> bool:
    return quantity_from_message(a).as_int64() is not None


def _as_approximate_float(a: Any) -> float:
    return quantity_from_message(a).as_approximate_float()


def _sign(a: Any) -> int:
    return quantity_from_message(a).sign()


def _major(a: Any) -> int:
    return _int64(int(a.major))


def _minor(a: Any) -> int:
    return _int64(int(a.minor))


def _patch(a: Any) -> int:
    return _int64(int(a.patch))


# ---------------------------------------------------------------------------------------- lists, sets, regex


def _is_sorted(items: Sequence[Any]) -> bool:
    return all(a <= b for a, b in pairwise(items))


def _sum(items: Sequence[Any]) -> Any:
    total: Any = 0
    for item in items:
        total = total + item
    if isinstance(total, int) and not isinstance(total, bool) and not _INT64_MIN <= total <= _INT64_MAX:
        raise ValueError("integer overflow")
    return total


def _min(items: Sequence[Any]) -> Any:
    if not items:
        raise ValueError("min called on empty list")
    return min(items)


def _max(items: Sequence[Any]) -> Any:
    if not items:
        raise ValueError("max called on empty list")
    return max(items)


def _equal(a: Any, b: Any) -> bool:
    # CEL equality: no bool/int confusion, numbers compare by value across int/double.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _slice(items: Sequence[Any], start: int, end: int) -> list[Any]:
    if start < 0 or end < 0 or start > end or end > len(items):
        raise ValueError(f"cannot slice({start}, {end}) a list of size {len(items)}")
    return list(items[start:end])


def _flatten(items: Sequence[Any], depth: int = 1) -> list[Any]:
    if depth < 0:
        raise ValueError("level must be non-negative")
    result: list[Any] = []
    for item in items:
        if isinstance(item, list) and depth > 0:
            result.extend(_flatten(item, depth - 1))
        else:
            result.append(item)
    return result


def _distinct(items: Sequence[Any]) -> list[Any]:
    result: list[Any] = []
    for item in items:
        if not any(_equal(item, seen) for seen in result):
            result.append(item)
    return result


def _reverse(items: Sequence[Any]) -> list[Any]:
    return list(reversed(items))


def _sort(items: Sequence[Any]) -> list[Any]:
    return sorted(items)


def _range(count: int) -> list[int]:
    return list(range(count))


def _contains(items: Sequence[Any], subset: Sequence[Any]) -> bool:
    return all(any(_equal(x, y) for y in items) for x in subset)


def _equivalent(a: Sequence[Any], b: Sequence[Any]) -> bool:
    return _contains(a, b) and _contains(b, a)


def _intersects(a: Sequence[Any], b: Sequence[Any]) -> bool:
    return any(any(_equal(x, y) for y in b) for x in a)


_RE2_OPTIONS: Final[Any] = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is reported as a CEL error, not on stderr


@cache
def _regex(pattern: str) -> Any:
    # RE2 like Kubernetes (Go's regexp) and cel-cpp's matches(): linear time, no backtracking blow-up.
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as err:
        raise ValueError(f"invalid regular expression {pattern!r}: {err}") from None


def _find(text: str, pattern: str) -> str:
    found = _regex(pattern).search(text)
    return found.group(0) if found else ""


def _find_all(text: str, pattern: str, limit: int = -1) -> list[str]:
    if limit == 0:
        return []
    found = [m.group(0) for m in _regex(pattern).finditer(text)]
    return found if limit < 0 else found[:limit]


# ------------------------------------------------------------------------------------------------ the env


def _overload(
    overload_id: str, result: Any, params: list[Any], impl: Callable[..., Any] | None, member: bool = False
) -> Any:
    if impl is None:
        return cel.Overload(overload_id, result, params, is_member=member)
    return cel.Overload(overload_id, result, params, is_member=member, impl=impl)


def _declarations() -> list[Any]:
    t = _T
    q = t(QUANTITY_TYPE_NAME)
    s = t(SEMVER_TYPE_NAME)
    dyn_list = t.List(t.DYN)
    decl = cel.FunctionDecl
    ov = _overload
    return [
        decl("quantity", [ov("string_to_quantity", q, [t.STRING], _quantity)]),
        decl("isQuantity", [ov("is_quantity_string", t.BOOL, [t.STRING], _is_quantity)]),
        decl(
            "semver",
            [
                ov("string_to_semver", s, [t.STRING], _semver),
                ov("string_bool_to_semver", s, [t.STRING, t.BOOL], _semver),
            ],
        ),
        decl(
            "isSemver",
            [
                ov("is_semver_string", t.BOOL, [t.STRING], _is_semver),
                ov("is_semver_string_bool", t.BOOL, [t.STRING, t.BOOL], _is_semver),
            ],
        ),
        # Shared names across quantity and semver: the implementation is registered once (see _compare).
        decl(
            "compareTo",
            [
                ov("quantity_compare_to", t.INT, [q, q], _compare_to, member=True),
                ov("semver_compare_to", t.INT, [s, s], None, member=True),
            ],
        ),
        decl(
            "isGreaterThan",
            [
                ov("quantity_is_greater_than", t.BOOL, [q, q], _is_greater_than, member=True),
                ov("semver_is_greater_than", t.BOOL, [s, s], None, member=True),
            ],
        ),
        decl(
            "isLessThan",
            [
                ov("quantity_is_less_than", t.BOOL, [q, q], _is_less_than, member=True),
                ov("semver_is_less_than", t.BOOL, [s, s], None, member=True),
            ],
        ),
        decl(
            "add",
            [
                ov("quantity_add", q, [q, q], _add, member=True),
                ov("quantity_add_int", q, [q, t.INT], _add, member=True),
            ],
        ),
        decl(
            "sub",
            [
                ov("quantity_sub", q, [q, q], _sub, member=True),
                ov("quantity_sub_int", q, [q, t.INT], _sub, member=True),
            ],
        ),
        decl("asInteger", [ov("quantity_get_int", t.INT, [q], _as_integer, member=True)]),
        decl("isInteger", [ov("quantity_is_integer", t.BOOL, [q], _is_integer, member=True)]),
        decl(
            "asApproximateFloat",
            [ov("quantity_get_float", t.DOUBLE, [q], _as_approximate_float, member=True)],
        ),
        decl("sign", [ov("quantity_sign", t.INT, [q], _sign, member=True)]),
        decl("major", [ov("semver_major", t.INT, [s], _major, member=True)]),
        decl("minor", [ov("semver_minor", t.INT, [s], _minor, member=True)]),
        decl("patch", [ov("semver_patch", t.INT, [s], _patch, member=True)]),
        # Kubernetes' lists library.
        decl("isSorted", [ov("list_is_sorted", t.BOOL, [dyn_list], _is_sorted, member=True)]),
        decl("sum", [ov("list_sum", t.DYN, [dyn_list], _sum, member=True)]),
        decl("min", [ov("list_min", t.DYN, [dyn_list], _min, member=True)]),
        decl("max", [ov("list_max", t.DYN, [dyn_list], _max, member=True)]),
        # (The lists library's indexOf/lastIndexOf are missing: cel-expr-python cannot add overloads to the
        # strings extension's functions of the same names.)
        # cel-go's lists extension (the parts that are plain functions; not sortBy, first, last).
        decl("slice", [ov("list_slice", dyn_list, [dyn_list, t.INT, t.INT], _slice, member=True)]),
        decl(
            "flatten",
            [
                ov("list_flatten", dyn_list, [dyn_list], _flatten, member=True),
                ov("list_flatten_int", dyn_list, [dyn_list, t.INT], _flatten, member=True),
            ],
        ),
        decl("distinct", [ov("list_distinct", dyn_list, [dyn_list], _distinct, member=True)]),
        decl("reverse", [ov("list_reverse", dyn_list, [dyn_list], _reverse, member=True)]),
        decl("sort", [ov("list_sort", dyn_list, [dyn_list], _sort, member=True)]),
        decl("lists.range", [ov("lists_range", t.List(t.INT), [t.INT], _range)]),
        # cel-go's sets extension.
        decl("sets.contains", [ov("list_sets_contains_list", t.BOOL, [dyn_list, dyn_list], _contains)]),
        decl("sets.equivalent", [ov("list_sets_equivalent_list", t.BOOL, [dyn_list, dyn_list], _equivalent)]),
        decl("sets.intersects", [ov("list_sets_intersects_list", t.BOOL, [dyn_list, dyn_list], _intersects)]),
        # Kubernetes' regex library.
        decl("find", [ov("string_find_string", t.STRING, [t.STRING, t.STRING], _find, member=True)]),
        decl(
            "findAll",
            [
                ov("string_find_all_string", t.List(t.STRING), [t.STRING, t.STRING], _find_all, member=True),
                ov(
                    "string_find_all_string_int",
                    t.List(t.STRING),
                    [t.STRING, t.STRING, t.INT],
                    _find_all,
                    member=True,
                ),
            ],
        ),
    ]


@cache
def typed_environment() -> Any:
    """The environment for type-checking only: `device.<field>` as `device_<field>` variables with
    Kubernetes' field types (see source.typed_device_fields). Never used to evaluate: the device binding is
    one map (fast to build per device), whose fields would all be dyn to the checker."""
    quantity = _T(QUANTITY_TYPE_NAME)
    return cel.NewEnv(
        POOL,
        variables={
            "device_driver": _T.STRING,
            "device_attributes": _T.Map(_T.STRING, _T.Map(_T.STRING, _T.DYN)),
            "device_capacity": _T.Map(_T.STRING, _T.Map(_T.STRING, quantity)),
            "device_allowMultipleAllocations": _T.BOOL,
        },
        extensions=[
            ext_strings.ExtStrings(version=2),
            ext_optional.ExtOptional(),
            ext_bindings.ExtBindings(),
        ],
        functions=_declarations(),
    )


@cache
def environment() -> Any:
    """The one DRA CEL environment (built on first use; compiling against it is thread-compatible)."""
    return cel.NewEnv(
        POOL,
        variables={"device": _T.Map(_T.STRING, _T.DYN)},
        extensions=[
            ext_strings.ExtStrings(version=2),
            ext_optional.ExtOptional(),
            ext_bindings.ExtBindings(),
        ],
        functions=_declarations(),
    )
