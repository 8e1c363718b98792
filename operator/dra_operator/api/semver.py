"""Semantic versions (semver 2.0.0) as Kubernetes DRA parses and orders them (github.com/blang/semver/v4).

`Semver.parse` is strict like blang's `semver.Parse`, which DRA uses for `version` attributes and CEL's
`semver()`: exactly MAJOR.MINOR.PATCH, no leading zeros, numbers within uint64, optional `-prerelease` and
`+build` made of dot-separated non-empty [0-9A-Za-z-] identifiers, numeric prerelease identifiers without
leading zeros. `Semver.parse(text, normalize=True)` is CEL's `semver(text, true)`: strips a leading `v`, drops
leading zeros and fills in a missing minor/patch. Ordering and equality are by precedence: prerelease versions
sort before the release, identifiers compare numerically or in ASCII order (numeric before alphanumeric), and
build metadata is ignored.
"""

from __future__ import annotations

from functools import total_ordering
from typing import Final

__all__ = ["Semver"]

_NUMBERS: Final = frozenset("0123456789")
_ALPHANUM: Final = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-")
_UINT64_MAX: Final = 2**64 - 1

Identifier = int | str


def _only(text: str, allowed: frozenset[str]) -> bool:
    return all(c in allowed for c in text)


def _number(text: str, what: str) -> int:
    if not _only(text, _NUMBERS):
        raise ValueError(f"invalid character(s) in {what} {text!r}")
    if len(text) > 1 and text[0] == "0":
        raise ValueError(f"{what} must not contain leading zeroes {text!r}")
    if not text:
        raise ValueError(f"{what} is empty")
    value = int(text)
    if value > _UINT64_MAX:
        raise ValueError(f"{what} {text!r} is out of range")
    return value


def _prerelease(text: str) -> Identifier:
    if not text:
        raise ValueError("prerelease identifier is empty")
    if _only(text, _NUMBERS):
        return _number(text, "numeric prerelease identifier")
    if _only(text, _ALPHANUM):
        return text
    raise ValueError(f"invalid character(s) in prerelease {text!r}")


def _compare_identifiers(a: Identifier, b: Identifier) -> int:
    if isinstance(a, int) and isinstance(b, int):
        return (a > b) - (a < b)
    if isinstance(a, int):
        return -1  # numeric identifiers have lower precedence than alphanumeric ones
    if isinstance(b, int):
        return 1
    return (a > b) - (a < b)


def _normalize(text: str) -> str:
    """CEL's normalizeAndParse preprocessing: strip `v`, drop leading zeros, fill missing components."""
    if text.startswith("v"):
        text = text[1:]
    parts = text.split(".", 2)
    for i, part in enumerate(parts):
        if len(part) > 1:
            part = part.lstrip("0")
            if not part or part[0] not in _NUMBERS:
                part = "0" + part
            parts[i] = part
    if len(parts) < 3:
        if any(c in parts[-1] for c in "+-"):
            raise ValueError("a short version cannot contain prerelease or build metadata")
        parts += ["0"] * (3 - len(parts))
    return ".".join(parts)


@total_ordering
class Semver:
    """An immutable semantic version; == and < follow semver precedence (build metadata ignored)."""

    __slots__ = ("build", "major", "minor", "patch", "prerelease")

    major: int
    minor: int
    patch: int
    prerelease: tuple[Identifier, ...]
    build: tuple[str, ...]

    def __init__(
        self,
        major: int,
        minor: int,
        patch: int,
        prerelease: tuple[Identifier, ...] = (),
        build: tuple[str, ...] = (),
    ) -> None:
        for name, value in (("major", major), ("minor", minor), ("patch", patch)):
            if not 0 <= value <= _UINT64_MAX:
                raise ValueError(f"semver {name} {value} is out of range")
        object.__setattr__(self, "major", major)
        object.__setattr__(self, "minor", minor)
        object.__setattr__(self, "patch", patch)
        object.__setattr__(self, "prerelease", tuple(prerelease))
        object.__setattr__(self, "build", tuple(build))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Semver is immutable")

    def __reduce__(self) -> tuple[object, ...]:
        return (Semver, (self.major, self.minor, self.patch, self.prerelease, self.build))

    @classmethod
    def parse(cls, text: str, *, normalize: bool = False) -> Semver:
        """Parses strictly (blang semver.Parse); raises ValueError naming the string."""
        if not isinstance(text, str):
            raise ValueError(f"a semantic version must be a string, not {text!r}")
        try:
            return cls._parse(_normalize(text) if normalize else text)
        except ValueError as err:
            raise ValueError(f"invalid semantic version {text!r}: {err}") from None

    @classmethod
    def is_valid(cls, text: str, *, normalize: bool = False) -> bool:
        """CEL isSemver()."""
        try:
            cls.parse(text, normalize=normalize)
        except ValueError:
            return False
        return True

    @classmethod
    def _parse(cls, text: str) -> Semver:
        if not text:
            raise ValueError("version string empty")
        parts = text.split(".", 2)
        if len(parts) != 3:
            raise ValueError("no MAJOR.MINOR.PATCH elements found")
        major = _number(parts[0], "major number")
        minor = _number(parts[1], "minor number")
        rest = parts[2]
        build: list[str] = []
        prerelease: list[Identifier] = []
        rest, plus, build_text = rest.partition("+")
        if plus:
            for identifier in build_text.split("."):
                if not identifier:
                    raise ValueError("build metadata identifier is empty")
                if not _only(identifier, _ALPHANUM):
                    raise ValueError(f"invalid character(s) in build metadata {identifier!r}")
                build.append(identifier)
        rest, dash, pre_text = rest.partition("-")
        if dash:
            prerelease = [_prerelease(identifier) for identifier in pre_text.split(".")]
        patch = _number(rest, "patch number")
        return cls(major, minor, patch, tuple(prerelease), tuple(build))

    def compare(self, other: Semver) -> int:
        """-1, 0 or 1 by semver precedence (blang Version.Compare)."""
        mine = (self.major, self.minor, self.patch)
        theirs = (other.major, other.minor, other.patch)
        if mine != theirs:
            return 1 if mine > theirs else -1
        if not self.prerelease or not other.prerelease:
            # A release outranks any of its prereleases.
            return (not self.prerelease) - (not other.prerelease)
        for a, b in zip(self.prerelease, other.prerelease, strict=False):
            result = _compare_identifiers(a, b)
            if result:
                return result
        return (len(self.prerelease) > len(other.prerelease)) - (len(self.prerelease) < len(other.prerelease))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Semver):
            return NotImplemented
        return self.compare(other) == 0

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Semver):
            return NotImplemented
        return self.compare(other) < 0

    def __hash__(self) -> int:
        return hash((Semver, self.major, self.minor, self.patch, self.prerelease))

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(str(p) for p in self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text

    def __repr__(self) -> str:
        return f"Semver({str(self)!r})"
