"""A light CEL tokenizer for what cel-expr-python cannot tell: literal calls to fold, indexed domains, fields.

It understands exactly enough CEL to be safe: identifiers, string and bytes literals in all quote forms (raw,
triple-quoted, escapes), `//` comments, and punctuation. Everything else is an opaque character. The compiler
proper (cel-cpp) still parses and type-checks the original text; this only drives three rewrites/checks:

- `quantity("64Gi")` / `semver("1.2.3")` / `semver("v1.2", true)` with a literal that parses become message
  constants, so the common selectors make no Python callback per evaluation;
- string literals used as `attributes["..."]` / `capacity["..."]` keys name the domains that must look up as
  an empty map when a device lacks them (Kubernetes' outer maps default to `{}`);
- `device.<field>` must be one of driver, attributes, capacity (Kubernetes declares `device` as an object
  type).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from dra_operator.api.quantity import Quantity
from dra_operator.api.semver import Semver
from dra_operator.cel.values import quantity_literal, semver_literal

__all__ = ["DEVICE_FIELDS", "Analysis", "Token", "analyze", "position", "tokenize"]

DEVICE_FIELDS: Final = frozenset({"driver", "attributes", "capacity"})
_IDENT_START: Final = frozenset("_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_IDENT_PART: Final = _IDENT_START | frozenset("0123456789")


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "ident", "string", "bytes", "punct", "other"
    text: str
    start: int
    end: int
    value: str | None = None  # decoded value of a string literal without escapes


def _string_end(source: str, start: int, quote: str, raw: bool) -> tuple[int, bool]:
    """End offset of a literal whose quote starts at `start`, and whether it contains escapes."""
    i = start + len(quote)
    escaped = False
    while i < len(source):
        if source.startswith(quote, i):
            return i + len(quote), escaped
        ch = source[i]
        if ch == "\\" and not raw:
            escaped = True
            i += 2
            continue
        if ch == "\n" and len(quote) == 1:
            break
        i += 1
    raise ValueError("unterminated string literal")


def tokenize(source: str) -> list[Token]:
    """Tokens of `source`; raises ValueError on an unterminated string (the compiler reports it properly)."""
    tokens: list[Token] = []
    i = 0
    n = len(source)
    while i < n:
        ch = source[i]
        if ch in " \t\r\n":
            i += 1
            continue
        if source.startswith("//", i):
            newline = source.find("\n", i)
            i = n if newline < 0 else newline + 1
            continue
        if ch in _IDENT_START:
            j = i + 1
            while j < n and source[j] in _IDENT_PART:
                j += 1
            word = source[i:j]
            prefix = word.lower()
            if j < n and source[j] in "'\"" and prefix in ("r", "b", "rb", "br"):
                raw = "r" in prefix
                token = _string_token(source, i, j, raw, "bytes" if "b" in prefix else "string")
                tokens.append(token)
                i = token.end
                continue
            tokens.append(Token("ident", word, i, j))
            i = j
            continue
        if ch in "'\"":
            token = _string_token(source, i, i, False, "string")
            tokens.append(token)
            i = token.end
            continue
        if ch in ".()[],":
            tokens.append(Token("punct", ch, i, i + 1))
        else:
            tokens.append(Token("other", ch, i, i + 1))
        i += 1
    return tokens


def _string_token(source: str, start: int, quote_at: int, raw: bool, kind: str) -> Token:
    quote = source[quote_at] * 3 if source.startswith(source[quote_at] * 3, quote_at) else source[quote_at]
    end, escaped = _string_end(source, quote_at, quote, raw)
    value = None if escaped else source[quote_at + len(quote) : end - len(quote)]
    return Token(kind, source[start:end], start, end, value)


def position(source: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of an offset."""
    line = source.count("\n", 0, offset) + 1
    column = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return line, column


@dataclass(frozen=True, slots=True)
class Analysis:
    folded: str  # the source with literal quantity()/semver() calls replaced by constants
    domains: frozenset[str]  # string literals used as keys of attributes[...] / capacity[...]
    bad_field: Token | None  # the first `device.<x>` with an unknown field


def analyze(source: str) -> Analysis:
    """Folds literal constructor calls, collects indexed domains and checks `device` fields."""
    try:
        tokens = tokenize(source)
    except ValueError:
        return Analysis(source, frozenset(), None)
    domains: set[str] = set()
    bad_field: Token | None = None
    replacements: list[tuple[int, int, str]] = []

    def at(k: int) -> Token | None:
        return tokens[k] if 0 <= k < len(tokens) else None

    for k, token in enumerate(tokens):
        before = at(k - 1)
        after_dot = before is not None and before.text == "." and before.kind == "punct"
        if token.kind != "ident":
            continue
        if token.text in ("attributes", "capacity") and after_dot:
            bracket, key, close = at(k + 1), at(k + 2), at(k + 3)
            if (
                bracket is not None
                and bracket.text == "["
                and key is not None
                and key.kind == "string"
                and key.value is not None
                and close is not None
                and close.text == "]"
            ):
                domains.add(key.value)
        if token.text == "device" and not after_dot and bad_field is None:
            dot, field = at(k + 1), at(k + 2)
            if (
                dot is not None
                and dot.text == "."
                and field is not None
                and field.kind == "ident"
                and field.text not in DEVICE_FIELDS
            ):
                bad_field = field
        if token.text in ("quantity", "semver") and not after_dot:
            folded = _fold_call(tokens, k)
            if folded is not None:
                replacements.append(folded)
    text = source
    for start, end, replacement in reversed(replacements):
        text = text[:start] + replacement + text[end:]
    return Analysis(text, frozenset(domains), bad_field)


def _fold_call(tokens: list[Token], k: int) -> tuple[int, int, str] | None:
    """(start, end, constant) for `quantity("lit")`, `semver("lit")` or `semver("lit", bool)`, else None."""
    rest = tokens[k + 1 : k + 6]
    if len(rest) < 3 or rest[0].text != "(" or rest[1].kind != "string" or rest[1].value is None:
        return None
    literal = rest[1].value
    name = tokens[k].text
    if rest[2].text == ")":
        end, normalize = rest[2].end, False
    elif (
        name == "semver"
        and len(rest) >= 5
        and rest[2].text == ","
        and rest[3].kind == "ident"
        and rest[3].text in ("true", "false")
        and rest[4].text == ")"
    ):
        end, normalize = rest[4].end, rest[3].text == "true"
    else:
        return None
    try:
        if name == "quantity":
            constant = quantity_literal(Quantity.parse(literal))
        else:
            constant = semver_literal(Semver.parse(literal, normalize=normalize))
    except ValueError:
        return None  # invalid literals stay calls: Kubernetes reports them at evaluation time
    return tokens[k].start, end, constant
