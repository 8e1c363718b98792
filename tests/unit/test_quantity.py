"""Quantity parsing, comparison and canonical strings against Kubernetes' own tables (apimachinery)."""

from __future__ import annotations

import math
import pickle
import re
from fractions import Fraction

import pytest

from dra_operator.api.quantity import QUANTITY_PATTERN, Quantity


def q(text: str) -> Quantity:
    return Quantity.parse(text)


# (input, exact value) — from Kubernetes' TestQuantityParse table and the DRA seed.
VALUES = [
    ("0", 0),
    ("0n", 0),
    ("0Ki", 0),
    ("1", 1),
    ("1Ki", 1024),
    ("7Mi", 7 * 2**20),
    ("64Gi", 68719476736),
    ("5Ti", 5 * 2**40),
    ("4Pi", 4 * 2**50),
    ("3Ei", 3 * 2**60),
    ("5n", Fraction(5, 10**9)),
    ("4u", Fraction(4, 10**6)),
    ("3m", Fraction(3, 1000)),
    ("50k", 50_000),
    ("7M", 7 * 10**6),
    ("6G", 6 * 10**9),
    ("5T", 5 * 10**12),
    ("2P", 2 * 10**15),
    ("1E", 10**18),
    ("1E-3", Fraction(1, 1000)),
    ("1e3", 1000),
    ("1.3E+6", 1_300_000),
    ("100.035k", 100_035),
    ("0.0005k", Fraction(1, 2)),
    (".001", Fraction(1, 1000)),
    ("1.", 1),
    ("1.G", 10**9),
    ("0.5e-2", Fraction(5, 1000)),
    ("1.5Gi", 1536 * 2**20),
    ("100.035Ki", Fraction(10243584, 100)),
    ("0.5Mi", 2**19),
    ("-1.5", Fraction(-3, 2)),
    ("+2k", 2000),
    # rounding of anything finer than 1n: away from zero, to 1n
    ("3.001n", Fraction(4, 10**9)),
    ("1.1E-9", Fraction(2, 10**9)),
    ("0.0000000001", Fraction(1, 10**9)),
    ("0.00000012345", Fraction(124, 10**9)),
    ("-0.00000012345", Fraction(-124, 10**9)),
    ("0.000000000001Ki", Fraction(2, 10**9)),
    # binary values are capped at 2^63-1, decimal ones are not
    ("9Ei", 2**63 - 1),
    ("-20Ei", -(2**63 - 1)),
    ("9223372036854775807Ki", 2**63 - 1),
    ("18446744073709551616", 2**64),
    ("12E", 12 * 10**18),
    # oddities Kubernetes accepts
    (".", 0),
    ("-", 0),
    ("Ki", 0),
]


@pytest.mark.parametrize(("text", "value"), VALUES)
def test_parse_value(text: str, value: int | Fraction) -> None:
    assert q(text).value == value


# (input, Kubernetes String(), CanonicalizeBytes) — from the apimachinery golden serialization corpus.
STRINGS = [
    ("1", "1", "1"),
    ("-1", "-1", "-1"),
    ("1Ki", "1Ki", "1Ki"),
    ("1024Mi", "1Gi", "1Gi"),
    ("1000M", "1G", "1G"),
    ("1e3", "1e3", "1e3"),
    ("0.1", "100m", "100m"),
    ("0.5", "500m", "500m"),
    ("1000", "1k", "1k"),
    ("1.5", "1500m", "1500m"),
    ("1.5Gi", "1536Mi", "1536Mi"),
    ("0.000000000000001", "1n", "1n"),
    ("1.441", "1.441", "1441m"),
    ("1.000001", "1.000001", "1000001u"),
    ("1.000000001", "1.000000001", "1000000001n"),
    ("9223372036854775807", "9223372036854775807", "9223372036854775807"),
    ("9223372036854775808", "9223372036854775808", "9223372036854775808"),
    ("1E", "1E", "1E"),
    ("100E", "100E", "100E"),
    ("1000E", "1e21", "1e21"),
    ("1e100", "10e99", "10e99"),
    ("8Ei", "9223372036854775807", "9223372036854775807"),
    ("-20Ei", "-9223372036854775807", "-9223372036854775807"),
    ("-9.5Gi", "-9728Mi", "-9728Mi"),
    ("-9.5000000001Gi", "-10200547328107374183n", "-10200547328107374183n"),
    (".001Ki", "1024m", "1024m"),
    (".000001Ki", "1024u", "1024u"),
    (".000000000001Ki", "2n", "2n"),
    ("0.5Ki", "512", "512"),
    ("1025Ki", "1025Ki", "1025Ki"),
    ("2000Ki", "2000Ki", "2000Ki"),
    ("1.08", "1080m", "1080m"),
    ("80e-3", "80e-3", "80e-3"),
    ("300e6", "300e6", "300e6"),
    ("0.001e12", "1e9", "1e9"),
    ("1000u", "1m", "1m"),
    ("+1", "+1", "1"),
]


@pytest.mark.parametrize(("text", "string", "canonical"), STRINGS)
def test_string_forms(text: str, string: str, canonical: str) -> None:
    parsed = q(text)
    assert str(parsed) == string
    assert parsed.canonical() == canonical
    # Either form parses back to the same value.
    assert q(string) == parsed
    assert q(canonical) == parsed


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        ("64Gi", "68719476736", 0),
        ("64Gi", "65536Mi", 0),
        ("1.5Gi", "1536Mi", 0),
        ("100m", "1", -1),
        ("0", "0", 0),
        ("100m", "50m", 1),
        ("10000T", "100Gi", 1),
        ("200M", "0.2G", 0),
        ("50M", "50Mi", -1),
        ("-1", "1m", -1),
        ("-2", "-1", -1),
        ("1e2000000000", "9Ei", 1),
        ("-1e2000000000", "-9Ei", -1),
        ("1e-2000000000", "0", 1),
        ("1e2000000000", "10e1999999999", 0),
        ("1.000000001", "1", 1),
    ],
)
def test_compare(left: str, right: str, expected: int) -> None:
    a, b = q(left), q(right)
    assert a.compare(b) == expected
    assert b.compare(a) == -expected
    assert (a == b) is (expected == 0)
    assert (a < b) is (expected < 0)
    assert (a > b) is (expected > 0)
    if expected == 0:
        assert hash(a) == hash(b)


INVALID = [
    "",
    "1.1.M",
    "1+1.0M",
    "0.1mi",
    "0.1am",
    "aoeu",
    ".5i",
    "1i",
    "-3.01i",
    "-3.01e-",
    "1e4294967297",
    "1E2147483648",
    " 1",
    "1 ",
    "200K",
    "1,3G",
    "1e1.5",
    "1Ei3",
    "Ei",
    "1e",
    "Three",
]


@pytest.mark.parametrize("text", INVALID)
def test_invalid_is_rejected_naming_the_string(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        Quantity.parse(text)
    assert not Quantity.is_valid(text)


@pytest.mark.parametrize("value", [1.5, None, True, [1]])
def test_parse_rejects_non_text(value: object) -> None:
    with pytest.raises(ValueError, match="quantity must be"):
        Quantity.parse(value)  # type: ignore[arg-type]


def test_parse_int_and_identity() -> None:
    assert Quantity.parse(68719476736) == q("64Gi")
    assert Quantity.parse(-5) == q("-5")
    parsed = q("1Gi")
    assert Quantity.parse(parsed) is parsed


@pytest.mark.parametrize(
    ("text", "int64"),
    [
        ("50k", 50_000),
        ("50000000G", 50_000_000_000_000_000),
        ("1", 1),
        ("0", 0),
        ("64Gi", 68719476736),
        ("1000m", None),  # held as 1000e-3 by Kubernetes
        ("1.5Gi", None),  # held as inf.Dec
        ("9999999999999999999999999999999999999G", None),
        ("10E", None),  # overflows int64
    ],
)
def test_as_int64_follows_kubernetes_representation(text: str, int64: int | None) -> None:
    assert q(text).as_int64() == int64


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        (("50k", "20k", 1), "70k"),
        (("50k", "20000", -1), "30k"),
        (("0", "1Gi", 1), "1Gi"),  # zero takes the other's format
        (("1Gi", "0", 1), "1Gi"),
        (("1Gi", "512Mi", -1), "512Mi"),
        (("100m", "1", 1), "1100m"),
    ],
)
def test_add_sub(expression: tuple[str, str, int], expected: str) -> None:
    left, right, sign = expression
    result = q(left).add(q(right)) if sign > 0 else q(left).sub(q(right))
    assert str(result) == expected
    assert result == q(expected)


def test_add_keeps_int64_form_when_kubernetes_does() -> None:
    assert q("50k").add(Quantity.from_int(20)).as_int64() == 50_020
    assert q("1.5Gi").add(q("1")).as_int64() is None


def test_arithmetic_refuses_absurd_alignment() -> None:
    with pytest.raises(ValueError, match="out of range"):
        q("1e2000000000").add(q("1"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.5", 1.5),
        ("64Gi", 68719476736.0),
        ("-3m", -0.003),
        ("1e400", math.inf),
        ("-1e400", -math.inf),
        ("0", 0.0),
    ],
)
def test_as_approximate_float(text: str, expected: float) -> None:
    assert q(text).as_approximate_float() == expected


def test_misc_accessors() -> None:
    assert q("-3m").sign() == -1
    assert q("0").sign() == 0
    assert q("1Ki").format == "BinarySI"
    assert q("1e3").format == "DecimalExponent"
    assert q("0.5Ki").format == "BinarySI"
    assert q("0.000000000001Ki").format == "DecimalSI"  # below 1, Kubernetes switches to decimal
    assert q("1.5").ceil_int() == 2
    assert q("-1.5").ceil_int() == -2
    assert -q("1Gi") == q("-1Gi")
    assert repr(q("1Gi")) == "Quantity('1Gi')"
    with pytest.raises(AttributeError):
        q("1").foo = 1  # type: ignore[attr-defined]


def test_pickle_round_trip() -> None:
    for text in ("1.441", "64Gi", "1e100", "-9.5Gi"):
        original = q(text)
        copy = pickle.loads(pickle.dumps(original))
        assert copy == original
        assert str(copy) == str(original)
        assert copy.as_int64() == original.as_int64()


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("64Gi", True),
        ("1.5", True),
        ("-1e3", True),
        ("+.5m", True),
        ("1e1.5", True),
        ("1.G", True),
        (".", False),
        ("Ki", False),
        ("1K", False),
    ],
)
def test_quantity_pattern(text: str, matches: bool) -> None:
    assert (re.match(QUANTITY_PATTERN, text) is not None) is matches
