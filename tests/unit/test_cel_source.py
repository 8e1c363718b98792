"""The CEL source rewrites (literal folding, comparison calls) and the order strings they rely on."""

from __future__ import annotations

import itertools

import pytest

from dra_operator.api.quantity import Quantity
from dra_operator.api.semver import Semver
from dra_operator.cel import CelDevice, compile_selector
from dra_operator.cel.library import environment
from dra_operator.cel.source import analyze, rewrite_comparisons, tokenize
from dra_operator.cel.values import quantity_order, semver_order

QUANTITIES = [
    "-1e100",
    "-9Ei",
    "-1.5Gi",
    "-1000",
    "-999",
    "-1.5",
    "-1.25",
    "-1.2",
    "-1",
    "-100m",
    "-1n",
    "0",
    "1n",
    "100m",
    "1",
    "1.2",
    "1.25",
    "1.5",
    "999",
    "1000",
    "1Ki",
    "1.5Gi",
    "64G",
    "64Gi",
    "1e100",
]
SEMVERS = [
    "0.0.1",
    "1.0.0-0",
    "1.0.0-1",
    "1.0.0-10",
    "1.0.0-a",
    "1.0.0-a.0",
    "1.0.0-a.b",
    "1.0.0-a-b",
    "1.0.0-ab",
    "1.0.0-b",
    "1.0.0",
    "1.0.1",
    "1.2.0",
    "1.10.0",
    "2.0.0",
    "18446744073709551615.0.0",
]


@pytest.mark.parametrize(("a", "b"), list(itertools.combinations(QUANTITIES, 2)))
def test_quantity_order_strings_sort_like_values(a: str, b: str) -> None:
    qa, qb = Quantity.parse(a), Quantity.parse(b)
    assert qa < qb
    assert quantity_order(qa) < quantity_order(qb)


@pytest.mark.parametrize(("a", "b"), list(itertools.combinations(SEMVERS, 2)))
def test_semver_order_strings_sort_like_precedence(a: str, b: str) -> None:
    va, vb = Semver.parse(a), Semver.parse(b)
    assert va < vb
    assert semver_order(va) < semver_order(vb)


def test_equal_values_have_equal_order_strings() -> None:
    assert quantity_order(Quantity.parse("64Gi")) == quantity_order(Quantity.parse("65536Mi"))
    assert semver_order(Semver.parse("1.0.0+a")) == semver_order(Semver.parse("1.0.0+b"))


@pytest.mark.parametrize(
    ("source", "rewritten"),
    [
        ("a.isGreaterThan(b)", "((a).order > (b).order)"),
        ("x.y[0].isLessThan(f(1, 2))", "((x.y[0]).order < (f(1, 2)).order)"),
        (
            "!(p + q).compareTo(r) == 1",
            "!(((p + q)).order > (r).order ? 1 : (((p + q)).order < (r).order ? -1 : 0)) == 1",
        ),
        ("a.isGreaterThan(b, c)", "a.isGreaterThan(b, c)"),  # not the quantity member: left alone
        ("a.?b.isGreaterThan(c)", "a.?b.isGreaterThan(c)"),  # optional selection: left alone
        ('"x.isGreaterThan(y)" == s', '"x.isGreaterThan(y)" == s'),  # inside a string
        (
            "a.isGreaterThan(b) && c.isLessThan(d)",
            "((a).order > (b).order) && ((c).order < (d).order)",
        ),
    ],
)
def test_rewrite_comparisons(source: str, rewritten: str) -> None:
    assert rewrite_comparisons(source) == rewritten


def test_fold_and_domains() -> None:
    analysis = analyze(
        'device.attributes["a.example.com"].x == 1 && device.capacity[\'b.example.com\'].y == quantity("1Ki")'
        ' && semver("v1.2", true) == semver("1.2.0") && "c.example.com" != ""'
    )
    assert analysis.domains == {"a.example.com", "b.example.com"}
    assert 'quantity("1Ki")' not in analysis.folded
    assert "semver(" not in analysis.folded
    assert analysis.bad_field is None


def test_tokenizer_handles_all_literal_forms() -> None:
    tokens = tokenize('r\'a\\d\' + """x"y""" + b"z" // comment quantity("1")\n + \'q\\\'s\'')
    strings = [(t.kind, t.value) for t in tokens if t.kind in ("string", "bytes")]
    assert strings == [("string", "a\\d"), ("string", 'x"y'), ("bytes", "z"), ("string", None)]
    with pytest.raises(ValueError, match="unterminated"):
        tokenize('"open')


# Each expression is evaluated with and without the rewrites; both must agree (and match the expectation).
SEMANTICS = [
    ('device.capacity["d.example.com"].memory.isGreaterThan(quantity("32Gi"))', True),
    ('device.capacity["d.example.com"].memory.isLessThan(quantity("64Gi"))', False),
    ('device.capacity["d.example.com"].memory.compareTo(quantity("65536Mi")) == 0', True),
    ('quantity("-1.5").compareTo(quantity("-1.25")) == -1', True),
    ('device.attributes["d.example.com"].version.isGreaterThan(semver("1.2.3-rc.1"))', True),
    ('device.attributes["d.example.com"].version.compareTo(semver("1.10.0")) < 0', True),
    ('semver("1.0.0-alpha").isLessThan(semver("1.0.0-alpha.1"))', True),
    ('quantity("50k").add(20).isGreaterThan(quantity("50k"))', True),
]


@pytest.mark.parametrize(("expression", "expected"), SEMANTICS)
def test_rewritten_programs_agree_with_the_original(expression: str, expected: bool) -> None:
    device = CelDevice.from_plain("d.example.com", {"version": Semver.parse("1.2.3")}, {"memory": "64Gi"})
    optimized = compile_selector(expression)
    assert optimized.evaluate(device) is expected
    plain = environment().compile(expression).eval(device.activation(environment(), frozenset()))
    assert plain.value() is expected
