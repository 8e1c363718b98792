"""Semver parsing and precedence as Kubernetes DRA does (blang semver.Parse, CEL semver())."""

from __future__ import annotations

import itertools
import pickle
import re

import pytest

from dra_operator.api.semver import Semver


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("1.2.3", (1, 2, 3, (), ())),
        ("0.0.0", (0, 0, 0, (), ())),
        ("1.0.0-alpha", (1, 0, 0, ("alpha",), ())),
        ("1.0.0-alpha.1", (1, 0, 0, ("alpha", 1), ())),
        ("1.0.0-0.3.7", (1, 0, 0, (0, 3, 7), ())),
        ("1.0.0-x.7.z.92", (1, 0, 0, ("x", 7, "z", 92), ())),
        ("1.0.0-x-y-z.--", (1, 0, 0, ("x-y-z", "--"), ())),
        ("1.0.0+20130313144700", (1, 0, 0, (), ("20130313144700",))),
        ("1.0.0-beta+exp.sha.5114f85", (1, 0, 0, ("beta",), ("exp", "sha", "5114f85"))),
        ("1.0.0+21AF26D3----117B344092BD", (1, 0, 0, (), ("21AF26D3----117B344092BD",))),
        ("1.2.3+build-1", (1, 2, 3, (), ("build-1",))),
        ("18446744073709551615.0.0", (2**64 - 1, 0, 0, (), ())),
    ],
)
def test_parse(text: str, parts: tuple[object, ...]) -> None:
    version = Semver.parse(text)
    assert (version.major, version.minor, version.patch, version.prerelease, version.build) == parts
    assert str(version) == text
    assert Semver.is_valid(text)


INVALID = [
    "",
    "1",
    "1.2",
    "v1.2.3",
    "01.2.3",
    "1.02.3",
    "1.2.03",
    "1.2.3-01",
    "1.2.3-",
    "1.2.3+",
    "1.2.3-a..b",
    "1.2.3+a..b",
    "1.2.3-a_b",
    "1.2.3+a_b",
    "1..3",
    "1.2.3.4",
    " 1.2.3",
    "1.2.3 ",
    "-1.2.3",
    "a.b.c",
    "18446744073709551616.0.0",
    "1.2.3-18446744073709551616",
]


@pytest.mark.parametrize("text", INVALID)
def test_invalid_is_rejected_naming_the_string(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        Semver.parse(text)
    assert not Semver.is_valid(text)


@pytest.mark.parametrize(
    ("text", "normalized"),
    [("v1.0.0", "1.0.0"), ("1.0", "1.0.0"), ("1", "1.0.0"), ("01.01.01", "1.1.1"), ("v2.3-rc.1", None)],
)
def test_normalize(text: str, normalized: str | None) -> None:
    if normalized is None:
        assert not Semver.is_valid(text, normalize=True)
    else:
        assert str(Semver.parse(text, normalize=True)) == normalized
        assert not Semver.is_valid(text)


# Each is lower than the next (semver.org precedence example, plus majors/minors).
ORDERED = [
    "0.9.9",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.1.0",
    "1.10.0",
    "2.0.0",
]


@pytest.mark.parametrize(("lower", "higher"), list(itertools.pairwise(ORDERED)))
def test_precedence(lower: str, higher: str) -> None:
    a, b = Semver.parse(lower), Semver.parse(higher)
    assert a < b
    assert b > a
    assert a.compare(b) == -1
    assert b.compare(a) == 1
    assert a != b


def test_build_metadata_is_ignored_for_equality() -> None:
    a, b = Semver.parse("1.2.3+one"), Semver.parse("1.2.3+two")
    assert a == b
    assert a.compare(b) == 0
    assert hash(a) == hash(b)
    assert str(a) != str(b)


def test_immutable_and_picklable() -> None:
    version = Semver.parse("1.2.3-rc.1+b")
    with pytest.raises(AttributeError):
        version.major = 2  # type: ignore[misc]
    copy = pickle.loads(pickle.dumps(version))
    assert copy == version
    assert str(copy) == str(version)
    assert repr(version) == "Semver('1.2.3-rc.1+b')"


def test_non_string_is_rejected() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        Semver.parse(123)  # type: ignore[arg-type]
