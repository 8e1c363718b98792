"""Property-based tests of the DRA CEL layer (dra_operator.cel): compile, then evaluate on devices.

Properties: any string and any grammar-shaped expression either compiles or raises CelCompileError with a
reason; what compiles evaluates on generated devices to a bool or raises CelEvaluationError with a reason;
the 10 KiB length limit (in bytes) and the nesting limit are refusals with messages; simple comparisons agree
with Python's answer. Profiles and example counts: tests/conftest.py.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from dra_operator.api.quantity import Quantity
from dra_operator.api.semver import Semver
from dra_operator.cel import (
    MAX_EXPRESSION_LENGTH,
    CelCompileError,
    CelDevice,
    CelEvaluationError,
    CompiledSelector,
    compile_selector,
)

EXAMPLES = settings().max_examples  # of the profile loaded in tests/conftest.py
DRIVER = "d.example.com"
OTHER = "o.example.com"

quantity_text = st.builds(
    lambda n, suffix: f"{n}{suffix}",
    st.integers(min_value=0, max_value=10**9),
    st.sampled_from(["", "m", "k", "M", "G", "Ki", "Mi", "Gi", "Ti", "e3", "E-2"]),
)
version = st.builds(Semver.parse, st.from_regex(r"\A(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]?)\.(0|[1-9])\Z"))
attribute_value = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.booleans(), st.text(max_size=8), version
)
attribute_id = st.sampled_from(["x", "s", "b", "v", "model"])


@st.composite
def devices(draw: st.DrawFn) -> CelDevice:
    attributes = draw(
        st.dictionaries(
            st.one_of(attribute_id, attribute_id.map(lambda name: f"{OTHER}/{name}")),
            attribute_value,
            max_size=5,
        )
    )
    capacity = draw(
        st.dictionaries(st.sampled_from(["m", "memory", f"{OTHER}/m"]), quantity_text, max_size=3)
    )
    return CelDevice.from_plain(
        draw(st.sampled_from([DRIVER, OTHER])),
        attributes,
        capacity,
        name="dev",
        allow_multiple_allocations=draw(st.booleans()),
    )


ATOMS = [
    f'device.attributes["{DRIVER}"].x',
    f'device.attributes["{DRIVER}"].s',
    f'device.attributes["{DRIVER}"].b',
    f'device.attributes["{DRIVER}"].v',
    f'device.attributes["{OTHER}"].model',
    f'device.attributes["{OTHER}"]',
    f'device.capacity["{DRIVER}"].m',
    f'device.capacity["{OTHER}"].m',
    "device.driver",
    "device.allowMultipleAllocations",
    "device.nope",
    "device",
    "1",
    "-1",
    "0",
    "9223372036854775807",
    "18446744073709551615u",
    "1.5",
    '"gpu"',
    "'x'",
    'b"x"',
    "true",
    "false",
    "null",
    "[]",
    "[1, 2]",
    '{"a": 1}',
    'quantity("64Gi")',
    'quantity("1.5")',
    'quantity("bad")',
    'semver("1.2.3")',
    'semver("v1.2", true)',
    'semver("bad")',
    "lists.range(5)",
    "lists.range(100000)",
    "x",
]
METHODS = [
    "compareTo",
    "isGreaterThan",
    "isLessThan",
    "add",
    "sub",
    "asInteger",
    "isInteger",
    "asApproximateFloat",
    "sign",
    "major",
    "minor",
    "patch",
    "isSorted",
    "sum",
    "min",
    "max",
    "slice",
    "flatten",
    "distinct",
    "reverse",
    "sort",
    "find",
    "findAll",
    "charAt",
    "indexOf",
    "lowerAscii",
    "replace",
    "split",
    "substring",
    "trim",
    "join",
    "format",
    "matches",
    "startsWith",
    "contains",
    "size",
    "orValue",
]
FUNCTIONS = [
    "quantity",
    "isQuantity",
    "semver",
    "isSemver",
    "has",
    "size",
    "int",
    "string",
    "type",
    "dyn",
    "sets.contains",
    "sets.intersects",
    "lists.range",
    "strings.quote",
    "cel.bind",
    "optional.of",
]


def _extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    arguments = st.lists(inner, max_size=3).map(", ".join)
    return st.one_of(
        st.tuples(st.sampled_from(["!", "-"]), inner).map("".join),
        inner.map(lambda e: f"({e})"),
        st.tuples(
            inner,
            st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "&&", "||", "+", "-", "*", "/", "%", "in"]),
            inner,
        ).map(" ".join),
        st.tuples(inner, inner, inner).map(lambda t: f"{t[0]} ? {t[1]} : {t[2]}"),
        st.tuples(inner, st.sampled_from(METHODS), arguments).map(lambda t: f"{t[0]}.{t[1]}({t[2]})"),
        st.tuples(st.sampled_from(FUNCTIONS), arguments).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(inner, st.sampled_from(["all", "exists", "exists_one", "map", "filter"]), inner).map(
            lambda t: f"{t[0]}.{t[1]}(x, {t[2]})"
        ),
        st.tuples(inner, inner).map(lambda t: f"{t[0]}[{t[1]}]"),
        st.tuples(inner, st.sampled_from(["x", "m", "?x", "driver"])).map(lambda t: f"{t[0]}.{t[1]}"),
        st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
    )


expressions = st.recursive(st.sampled_from(ATOMS), _extend, max_leaves=16)


def compiled_or_refused(expression: str) -> CompiledSelector | None:
    try:
        selector = compile_selector(expression)
    except CelCompileError as err:
        assert err.reason.strip() and str(err).startswith("CEL expression")
        str(err).encode()  # printable (a lone surrogate would make logging and events fail)
        return None
    assert selector.expression == expression
    return selector


def evaluated_or_failed(selector: CompiledSelector, device: CelDevice) -> bool | None:
    try:
        result = selector.evaluate(device)
    except CelEvaluationError as err:
        assert err.reason.strip() and err.device == device.name and str(err)
        return None
    assert isinstance(result, bool)
    return result


@given(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=120), st.lists(devices(), max_size=3)
)
@example("\ud800", [])  # found: UnicodeEncodeError from the length check
@example("(" * 40 + "true" + ")" * 40, [])  # cel-cpp's depth limit: its status code no longer in the text
def test_any_string_compiles_or_is_refused(expression: str, devs: list[CelDevice]) -> None:
    selector = compiled_or_refused(expression)
    if selector is not None:
        for device in devs:
            evaluated_or_failed(selector, device)


@settings(max_examples=EXAMPLES * 3)
@given(expressions, st.lists(devices(), min_size=1, max_size=3))
def test_grammar_shaped_expressions_compile_and_evaluate_or_explain(
    expression: str, devs: list[CelDevice]
) -> None:
    selector = compiled_or_refused(expression)
    if selector is None:
        return
    for device in devs:
        evaluated_or_failed(selector, device)


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Semver):
        return f'semver("{value}")'
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's escapes are CEL escapes
    return str(value)


@given(attribute_value, attribute_value, st.sampled_from(["==", "!="]))
@example(0, "\n", "==")
def test_attribute_comparisons_agree_with_python(stored: Any, literal: Any, operator: str) -> None:
    device = CelDevice.from_plain(DRIVER, {"x": stored})
    expression = f'device.attributes["{DRIVER}"].x {operator} {_literal(literal)}'
    selector = compiled_or_refused(expression)
    assert selector is not None, expression
    result = evaluated_or_failed(selector, device)
    if type(stored) is type(literal):
        assert result is ((stored == literal) == (operator == "=="))
    missing = compile_selector(f'device.attributes["{DRIVER}"].missing {operator} {_literal(literal)}')
    assert evaluated_or_failed(missing, device) is None


@given(quantity_text, quantity_text)
def test_quantity_comparisons_agree_with_python(stored: str, literal: str) -> None:
    device = CelDevice.from_plain(DRIVER, capacity={"memory": stored})
    expected = Quantity.parse(stored).compare(Quantity.parse(literal))
    memory = f'device.capacity["{DRIVER}"].memory'
    for expression, answer in [
        (f'{memory}.compareTo(quantity("{literal}")) == {expected}', True),
        (f'{memory}.isGreaterThan(quantity("{literal}"))', expected > 0),
        (f'{memory}.isLessThan(quantity("{literal}"))', expected < 0),
        (f'{memory} == quantity("{literal}")', expected == 0),
    ]:
        selector = compiled_or_refused(expression)
        assert selector is not None and selector.evaluate(device) is answer, expression


@given(st.integers(min_value=0, max_value=MAX_EXPRESSION_LENGTH + 64), st.sampled_from([" ", "é", "€"]))
def test_the_length_limit_counts_bytes_and_is_a_message(size: int, pad: str) -> None:
    # `true` followed by a comment of `size` bytes of padding (1, 2 or 3 bytes per character).
    expression = "true //" + pad * (size // len(pad.encode()))
    length = len(expression.encode())
    if length > MAX_EXPRESSION_LENGTH:
        try:
            compile_selector(expression)
        except CelCompileError as err:
            assert f"{length} bytes" in err.reason and str(MAX_EXPRESSION_LENGTH) in err.reason
        else:
            raise AssertionError(f"an expression of {length} bytes compiled")
    else:
        assert compile_selector(expression).evaluate(CelDevice.from_plain(DRIVER)) is True


NESTINGS = {
    "parentheses": ("(", "true", ")"),
    "negations": ("!", "true", ""),
    "lists": ("[", "1", "]"),
    "ternaries": ("false ? false : ", "true", ""),  # CEL allows a bare ternary only in the else branch
    "calls": ("", 'quantity("1")', ".add(1)"),
}


@given(st.sampled_from(sorted(NESTINGS)), st.integers(min_value=0, max_value=3000))
@example("parentheses", 32)
@example("negations", 5000)
@example("ternaries", 2)
def test_nesting_compiles_or_is_refused_with_a_message(shape: str, depth: int) -> None:
    before, core, after = NESTINGS[shape]
    inner = before * depth + core + after * depth
    expression = {
        "lists": f"size([{inner}]) == 1",
        "calls": f"{inner}.isInteger()",
    }.get(shape, inner)
    if len(expression.encode()) > MAX_EXPRESSION_LENGTH:
        assert compiled_or_refused(expression) is None
        return
    selector = compiled_or_refused(expression)
    if depth <= 8:
        assert selector is not None, "shallow nesting compiles"
    if selector is not None:
        result = evaluated_or_failed(selector, CelDevice.from_plain(DRIVER))
        expected = depth % 2 == 0 if shape == "negations" else True
        assert result is expected
