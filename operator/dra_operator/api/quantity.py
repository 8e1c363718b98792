"""Kubernetes resource quantities: parsing, exact comparison and canonical strings, as apimachinery does.

The rules follow `resource.ParseQuantity` and `Quantity.String` of k8s.io/apimachinery/pkg/api/resource:

- grammar: optional sign, digits with an optional fraction (`1.`, `.5` and even `.` are accepted), then one
  suffix: binary `Ki Mi Gi Ti Pi Ei`, decimal `n u m "" k M G T P E`, or an exponent `e<int>` / `E<int>`;
- the suffix picks the format (BinarySI, DecimalSI, DecimalExponent) that the string form keeps;
- values are exact; anything finer than 1n is rounded away from zero to 1n ("ask for some, get some");
  binary values are capped at 2^63-1 in magnitude (decimal ones are not);
- the canonical string has no fraction and the largest exponent/suffix that loses nothing: a binary value
  stays binary when it is an integer of magnitude >= 1024, otherwise it is written in decimal; decimal
  exponents are multiples of three; a decimal value beyond the `E` suffix falls back to exponent notation;
- `str()` is what Kubernetes' `String()` returns, which for inputs its fast parser considers canonical is
  the input itself (`"1.500"` stays `"1.500"`, as the apiserver writes it back; `canonical()` is `"1500m"`).

Equality, hashing and ordering are by value (`64Gi == 68719476736`), independent of the format.
Kubernetes keeps exponents in an int32: an exponent suffix beyond +-(2^31-1) is rejected (as current
apimachinery does rather than truncating it). We compute exactly with a compact (mantissa, exponent) pair, so
absurd exponents such as `1e2000000000` cost nothing until someone asks for `value`.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import total_ordering
from typing import Final, Literal

__all__ = ["QUANTITY_PATTERN", "Format", "Quantity"]

Format = Literal["DecimalSI", "BinarySI", "DecimalExponent"]

# The pattern Kubernetes' OpenAPI schema gives quantities (as CRD generators emit it). A first line of
# defence only: it accepts fractional exponents (`1e1.5`) that the parser rejects, and rejects digit-less
# inputs (`.`, `Ki`) the parser accepts as zero, exactly as the apiserver's schema and parser disagree.
QUANTITY_PATTERN: Final = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

_DIGITS: Final = frozenset("0123456789")
_SUFFIX_CHARS: Final = frozenset("eEinumkKMGTP")
_INT64_MAX: Final = 2**63 - 1
_INT64_MIN: Final = -(2**63)
_INT32_MAX: Final = 2**31 - 1
# Digits Kubernetes' fast path accepts in the number (maxInt64Factors).
_MAX_INT64_FACTORS: Final = 18
_NANO: Final = -9

_DECIMAL_SUFFIXES: Final[dict[str, int]] = {
    "n": -9,
    "u": -6,
    "m": -3,
    "": 0,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}
_BINARY_SUFFIXES: Final[dict[str, int]] = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_BY_EXPONENT: Final = {exp: suffix for suffix, exp in _DECIMAL_SUFFIXES.items()}
_BINARY_BY_POWER: Final = {exp // 10: suffix for suffix, exp in _BINARY_SUFFIXES.items()}
# Arithmetic (CEL add/sub) refuses to align exponents further apart than this: the aligned mantissa would have
# that many digits. Parsed values never get near it in practice.
_MAX_ALIGN: Final = 4_000


def _strip_tens(mantissa: int, exponent: int) -> tuple[int, int]:
    """Moves every factor 10 of the mantissa into the exponent (zero becomes 0e0)."""
    if mantissa == 0:
        return 0, 0
    while mantissa % 10 == 0:
        mantissa //= 10
        exponent += 1
    return mantissa, exponent


def _digits(mantissa: int) -> int:
    """Decimal digits of |mantissa| (avoiding str(): Python refuses int-to-str beyond 4300 digits)."""
    magnitude = abs(mantissa)
    if magnitude < 10**15:
        return len(str(magnitude))
    digits = int(magnitude.bit_length() * 0.30102999566398114)
    while 10**digits <= magnitude:
        digits += 1
    while digits > 1 and 10 ** (digits - 1) > magnitude:
        digits -= 1
    return digits


class _ParseError(ValueError):
    pass


@total_ordering
class Quantity:
    """An exact, immutable Kubernetes quantity: `Quantity.parse`, compare with == and <, str() for JSON."""

    __slots__ = ("_exponent", "_format", "_int64", "_mantissa", "_string")

    _mantissa: int
    _exponent: int
    _format: Format
    _string: str | None
    # Kubernetes keeps small values as int64Amount(value, scale) and others as inf.Dec; CEL's isInteger and
    # asInteger answer from that representation, so we remember it: (value, scale), or None for inf.Dec.
    _int64: tuple[int, int] | None

    def __init__(
        self,
        mantissa: int,
        exponent: int = 0,
        format: Format = "DecimalSI",
        *,
        _string: str | None = None,
        _int64: tuple[int, int] | Literal[False] | None = False,
    ) -> None:
        """The value mantissa * 10**exponent. Prefer `parse`; this constructor does no rounding or capping."""
        m, e = _strip_tens(mantissa, exponent)
        object.__setattr__(self, "_mantissa", m)
        object.__setattr__(self, "_exponent", e)
        object.__setattr__(self, "_format", format)
        object.__setattr__(self, "_string", _string)
        if _int64 is False:
            _int64 = (mantissa, exponent) if _INT64_MIN <= mantissa <= _INT64_MAX else None
        object.__setattr__(self, "_int64", _int64)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Quantity is immutable")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (self._mantissa, self._exponent, self._format, self._string, self._int64))

    # ----------------------------------------------------------------------------------------------- parsing

    @classmethod
    def parse(cls, value: str | int | Quantity) -> Quantity:
        """Parses like Kubernetes' ParseQuantity; an int is taken as its decimal string. Raises ValueError."""
        if isinstance(value, Quantity):
            return value
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"quantity must be a string or an integer, not {value!r}")
        text = str(value)
        try:
            return _parse(text)
        except _ParseError as err:
            raise ValueError(f"invalid quantity {text!r}: {err}") from None

    @classmethod
    def is_valid(cls, value: str) -> bool:
        """Whether Kubernetes would parse the string (CEL isQuantity)."""
        try:
            _parse(value)
        except (_ParseError, ValueError):
            return False
        return True

    @classmethod
    def from_int(cls, value: int, format: Format = "DecimalSI") -> Quantity:
        """Like resource.NewQuantity(value, format)."""
        return cls(value, 0, format, _int64=(value, 0) if _INT64_MIN <= value <= _INT64_MAX else None)

    # ------------------------------------------------------------------------------------------- accessors

    @property
    def value(self) -> Fraction:
        """The exact value (beware: a quantity like 1e2000000000 has two billion digits)."""
        if self._exponent >= 0:
            return Fraction(self._mantissa * 10**self._exponent)
        return Fraction(self._mantissa, 10**-self._exponent)

    @property
    def format(self) -> Format:
        return self._format

    @property
    def mantissa(self) -> int:
        """The value is mantissa * 10**exponent, with no factor 10 left in the mantissa."""
        return self._mantissa

    @property
    def exponent(self) -> int:
        return self._exponent

    def sign(self) -> int:
        return (self._mantissa > 0) - (self._mantissa < 0)

    def is_zero(self) -> bool:
        return self._mantissa == 0

    def as_int64(self) -> int | None:
        """Kubernetes' Quantity.AsInt64: the value as int64 when its int64 representation allows, else None.

        Like Kubernetes this answers from the internal representation: `1000m` and `1.5Gi` are not
        int64-convertible (they are held as 1000e-3 and as a big decimal), while `50k` is.
        """
        if self._int64 is None:
            return None
        value, scale = self._int64
        if scale == 0:
            return value
        if scale < 0:
            return None
        if value == 0:
            return 0
        if scale > 18:
            return None
        result = value * 10**scale
        return result if _INT64_MIN <= result <= _INT64_MAX else None

    def as_approximate_float(self) -> float:
        """Kubernetes' AsApproximateFloat64 (+-inf beyond the float range)."""
        if self._mantissa == 0:
            return 0.0
        if self._exponent > 400:
            return math.copysign(math.inf, self._mantissa)
        if self._exponent < -400 - _digits(self._mantissa):
            return math.copysign(0.0, self._mantissa)
        try:
            return float(self.value)
        except OverflowError:
            return math.copysign(math.inf, self._mantissa)

    def ceil_int(self) -> int:
        """The value rounded away from zero to an integer (Kubernetes' Value(), without saturation)."""
        if self._exponent >= 0:
            return int(self._mantissa * 10**self._exponent)
        if _digits(self._mantissa) <= -self._exponent:
            return self.sign()  # |value| < 1 rounds away from zero to +-1
        magnitude = -(-abs(self._mantissa) // 10**-self._exponent)
        return int(magnitude if self._mantissa > 0 else -magnitude)

    # ----------------------------------------------------------------------------------------- arithmetic

    def add(self, other: Quantity) -> Quantity:
        """Kubernetes' Add: exact sum; the format is ours unless we are zero."""
        return self._combine(other, 1)

    def sub(self, other: Quantity) -> Quantity:
        """Kubernetes' Sub: exact difference; the format is ours unless we are zero."""
        return self._combine(other, -1)

    def _combine(self, other: Quantity, sign: int) -> Quantity:
        fmt = other._format if self._mantissa == 0 else self._format
        low = min(self._exponent, other._exponent)
        if max(self._exponent, other._exponent) - low > _MAX_ALIGN and self._mantissa and other._mantissa:
            raise ValueError(f"quantity arithmetic out of range: {self} and {other}")
        m = self._mantissa * 10 ** (self._exponent - low)
        m += sign * other._mantissa * 10 ** (other._exponent - low)
        int64 = self._int64_combine(other, sign)
        return Quantity(m, low, fmt, _int64=int64)

    def _int64_combine(self, other: Quantity, sign: int) -> tuple[int, int] | None:
        """Mirrors int64Amount.Add: stays int64 when both are and nothing overflows."""
        if self._int64 is None or other._int64 is None:
            return None
        a_value, a_scale = self._int64
        b_value, b_scale = other._int64
        b_value *= sign
        if not _INT64_MIN <= b_value <= _INT64_MAX:
            return None
        if b_value == 0:
            return (a_value, a_scale)
        if a_value == 0:
            return (b_value, b_scale)
        if a_scale > b_scale:
            a_value, a_scale = a_value * 10 ** (a_scale - b_scale), b_scale
        elif b_scale > a_scale:
            b_value = b_value * 10 ** (b_scale - a_scale)
        for part in (a_value, b_value, a_value + b_value):
            if not _INT64_MIN <= part <= _INT64_MAX:
                return None
        return (a_value + b_value, a_scale)

    def __neg__(self) -> Quantity:
        int64 = None if self._int64 is None else (-self._int64[0], self._int64[1])
        return Quantity(-self._mantissa, self._exponent, self._format, _int64=int64)

    # ----------------------------------------------------------------------------------------- comparison

    def compare(self, other: Quantity) -> int:
        """-1, 0 or 1, like Kubernetes' Cmp, without ever expanding large exponents."""
        a, b = self.sign(), other.sign()
        if a != b:
            return 1 if a > b else -1
        if a == 0:
            return 0
        # Same sign: compare magnitudes by order of magnitude first, then aligned mantissas.
        order_a = _digits(self._mantissa) + self._exponent
        order_b = _digits(other._mantissa) + other._exponent
        if order_a != order_b:
            return a if order_a > order_b else -a
        low = min(self._exponent, other._exponent)
        ma = abs(self._mantissa) * 10 ** (self._exponent - low)
        mb = abs(other._mantissa) * 10 ** (other._exponent - low)
        if ma == mb:
            return 0
        return a if ma > mb else -a

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Quantity):
            return NotImplemented
        return self._mantissa == other._mantissa and self._exponent == other._exponent

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Quantity):
            return NotImplemented
        return self.compare(other) < 0

    def __hash__(self) -> int:
        return hash((Quantity, self._mantissa, self._exponent))

    # ------------------------------------------------------------------------------------------ formatting

    def __str__(self) -> str:
        """Kubernetes' String(): the cached input when its parser kept it, otherwise `canonical()`."""
        if self._string is not None:
            return self._string
        return self.canonical()

    def __repr__(self) -> str:
        return f"Quantity({str(self)!r})"

    def canonical(self) -> str:
        """Kubernetes' CanonicalizeBytes: no fraction, the largest lossless suffix, the parsed format."""
        if self._mantissa == 0:
            return "0"
        fmt = self._format
        if fmt == "BinarySI":
            if _abs_lt_1024(self):
                # Kubernetes writes small binary values in decimal ("avoids rounding and confusion").
                fmt = "DecimalSI"
            elif self._exponent < 0:
                # Not an integer: binary would round, so Kubernetes writes it in decimal.
                fmt = "DecimalSI"
            else:
                amount = self._mantissa * 10**self._exponent
                power = 0
                while abs(amount) >= 1024 and amount % 1024 == 0:
                    amount //= 1024
                    power += 1
                if power in _BINARY_BY_POWER or power == 0:
                    return f"{amount}{_BINARY_BY_POWER.get(power, '')}"
                fmt = "DecimalSI"  # beyond Ei (only reachable by arithmetic): fall back to decimal
        mantissa, exponent = self._mantissa, self._exponent
        shift = exponent % 3
        mantissa *= 10**shift
        exponent -= shift
        if fmt == "DecimalSI" and exponent in _DECIMAL_BY_EXPONENT:
            return f"{mantissa}{_DECIMAL_BY_EXPONENT[exponent]}"
        if exponent == 0:
            return str(mantissa)
        return f"{mantissa}e{exponent}"

    def compare_int(self, value: int) -> int:
        """Compares with an integer (like CmpInt64)."""
        return self.compare(Quantity(value))


def _abs_lt_1024(q: Quantity) -> bool:
    """Whether -1024 < q < 1024 (the range Kubernetes never writes in binary form)."""
    return q.compare_int(-1024) > 0 and q.compare_int(1024) < 0


def _rebuild(
    mantissa: int, exponent: int, fmt: Format, string: str | None, int64: tuple[int, int] | None
) -> Quantity:
    return Quantity(mantissa, exponent, fmt, _string=string, _int64=int64)


# ------------------------------------------------------------------------------------------------- the parser


def _scan(text: str) -> tuple[bool, str, str, str, str]:
    """Kubernetes' parseQuantityString: (positive, value, num, denom, suffix) or _ParseError."""
    positive = True
    pos = 0
    end = len(text)
    if pos < end and text[0] in "+-":
        positive = text[0] == "+"
        pos += 1
    # leading zeros
    while True:
        if pos >= end:
            return positive, "0", "0", "", ""
        if text[pos] != "0":
            break
        pos += 1
    start = pos
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    num = text[start:pos] or "0"
    if pos >= end:
        return positive, text, num, "", ""
    denom = ""
    if text[pos] == ".":
        pos += 1
        start = pos
        while pos < end and text[pos] in _DIGITS:
            pos += 1
        denom = text[start:pos]
        if pos >= end:
            return positive, text, num, denom, ""
    value = text[:pos]
    suffix_start = pos
    while pos < end and text[pos] in _SUFFIX_CHARS:
        pos += 1
    if pos < end and text[pos] in "+-":
        pos += 1
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    if pos < end:
        raise _ParseError(
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        )
    return positive, value, num, denom, text[suffix_start:]


def _interpret(suffix: str) -> tuple[int, int, Format]:
    """(base, exponent, format) of a suffix, or _ParseError."""
    if suffix in _DECIMAL_SUFFIXES:
        return 10, _DECIMAL_SUFFIXES[suffix], "DecimalSI"
    if suffix in _BINARY_SUFFIXES:
        return 2, _BINARY_SUFFIXES[suffix], "BinarySI"
    if len(suffix) > 1 and suffix[0] in "eE":
        digits = suffix[1:]
        body = digits[1:] if digits[0] in "+-" else digits
        if body and all(c in _DIGITS for c in body):
            parsed = int(digits)
            # Kubernetes keeps scales in an int32 that it negates: exponents beyond +-(2^31-1) are rejected.
            if -_INT32_MAX <= parsed <= _INT32_MAX:
                return 10, parsed, "DecimalExponent"
    raise _ParseError(f"unable to parse quantity's suffix {suffix!r}")


def _parse(text: str) -> Quantity:
    if not text:
        raise _ParseError("empty string")
    if text == "0":
        return Quantity(0, 0, "DecimalSI", _string="0", _int64=(0, 0))
    positive, value, num, denom, suffix = _scan(text)
    base, exponent, fmt = _interpret(suffix)

    # Kubernetes' fast path: small numbers become an int64 with a decimal scale, exactly, no rounding.
    if fmt == "BinarySI":
        # Mirrors Kubernetes' estimate of the decimal digits a binary suffix adds.
        precision = 15 - len(num) - (exponent * 3) // 10 - 1 if not denom else -1
        scale = 0
    else:
        precision = _MAX_INT64_FACTORS - (len(num) + len(denom))
        scale = exponent
    if precision >= 0:
        scale -= len(denom)
        if scale >= _NANO:
            shifted = num + denom
            unscaled = int(shifted)
            result = unscaled << exponent if fmt == "BinarySI" else unscaled
            if not positive:
                result = -result
            keep = False
            if fmt == "BinarySI":
                keep = unscaled & 0x07 != 0
            else:
                keep = scale % 3 == 0 and not shifted.endswith("000") and shifted[0] != "0"
            return Quantity(result, scale, fmt, _string=text if keep else None, _int64=(result, scale))

    # The slow path: arbitrary precision, then rounding to 1n away from zero and the binary cap.
    digits_only = value.lstrip("+-")
    if not any(c in _DIGITS for c in digits_only):
        raise _ParseError("unable to parse numeric part of quantity")
    whole, _, fraction = digits_only.partition(".")
    try:
        mantissa = int((whole + fraction) or "0")
    except ValueError as err:  # Python refuses to parse integers of more than 4300 digits
        raise _ParseError(f"numeric part too long ({err})") from None
    dec_exponent = -len(fraction)
    if base == 10:
        dec_exponent = exponent - len(fraction)
    else:
        mantissa <<= exponent
    if mantissa != 0 and dec_exponent < _NANO:
        shift = _NANO - dec_exponent
        # A mantissa with no more digits than the shift is below 1n: it rounds up to exactly 1n.
        mantissa = 1 if _digits(mantissa) <= shift else -(-mantissa // 10**shift)
        dec_exponent = _NANO
    magnitude = Quantity(mantissa, dec_exponent)
    if fmt == "BinarySI":
        if magnitude.compare_int(_INT64_MAX) > 0:
            magnitude = Quantity(_INT64_MAX)
        if magnitude.compare_int(1) < 0 and magnitude.sign() > 0:
            fmt = "DecimalSI"
    m = magnitude.mantissa if positive else -magnitude.mantissa
    return Quantity(m, magnitude.exponent, fmt, _int64=None)
