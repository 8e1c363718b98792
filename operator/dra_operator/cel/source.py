"""A light CEL tokenizer for what cel-expr-python cannot tell: literal calls to fold, indexed domains, fields.

It understands exactly enough CEL to be safe: identifiers, string and bytes literals in all quote forms (raw,
triple-quoted, escapes), `//` comments, and punctuation. Everything else is an opaque character. The compiler
proper (cel-cpp) still parses and type-checks the original text; this only drives three rewrites/checks:

- `quantity("64Gi")` / `semver("1.2.3")` / `semver("v1.2", true)` with a literal that parses become message
  constants, so the common selectors make no Python callback per evaluation;
- string literals used as `attributes["..."]` / `capacity["..."]` keys name the domains that must look up as
  an empty map when a device lacks them (Kubernetes' outer maps default to `{}`);
- `X.compareTo(Y)`, `X.isGreaterThan(Y)`, `X.isLessThan(Y)` on quantities/semvers become comparisons of the
  messages' `order` strings, again sparing a Python callback (and its leak) per evaluation;
- `device.<field>` must be one of driver, attributes, capacity (Kubernetes declares `device` as an object
  type), and `typed_device_fields` turns each into a typed variable of its own so that the result type is
  checked as Kubernetes checks it (`device.driver` alone is a string, not a bool).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from dra_operator.api.quantity import Quantity
from dra_operator.api.semver import Semver
from dra_operator.cel.values import quantity_literal, semver_literal

__all__ = [
    "DEVICE_FIELDS",
    "Analysis",
    "Token",
    "analyze",
    "position",
    "rewrite_comparisons",
    "tokenize",
    "typed_device_fields",
]

DEVICE_FIELDS: Final = frozenset({"driver", "attributes", "capacity", "allowMultipleAllocations"})
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
        if ch in ".()[]{},":
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


_COMPARISONS: Final = frozenset({"compareTo", "isGreaterThan", "isLessThan"})
_OPEN: Final = {")": "(", "]": "[", "}": "{"}
_MAX_REWRITES: Final = 64


def _matches(tokens: list[Token]) -> dict[int, int] | None:
    """Index of the matching bracket for every bracket token, or None when unbalanced."""
    found: dict[int, int] = {}
    stack: list[int] = []
    for k, token in enumerate(tokens):
        if token.kind != "punct":
            continue
        if token.text in "([{":
            stack.append(k)
        elif token.text in _OPEN:
            if not stack or tokens[stack[-1]].text != _OPEN[token.text]:
                return None
            opened = stack.pop()
            found[opened], found[k] = k, opened
    return found if not stack else None


def _receiver_start(tokens: list[Token], matches: dict[int, int], dot: int) -> int | None:
    """First token of the postfix chain that ends just before tokens[dot], or None when unsure."""
    k = dot - 1
    while True:
        if k < 0:
            return None
        token = tokens[k]
        if token.kind == "punct" and token.text in _OPEN:
            k = matches[k]
            before = tokens[k - 1] if k > 0 else None
            # f(...), x[...], Type{...}, a(...)[...]: the group continues the chain to its left.
            if before is not None and (
                before.kind == "ident" or (before.kind == "punct" and before.text in _OPEN)
            ):
                k -= 1
                continue
        elif token.kind not in ("ident", "string"):
            return None
        before = tokens[k - 1] if k > 0 else None
        if before is not None and before.kind == "punct" and before.text == ".":
            k -= 2  # a field or member call: continue with what precedes the dot
            continue
        if before is not None and before.text == "?" and k >= 2 and tokens[k - 2].text == ".":
            return None  # optional field selection (a.?b): leave it alone
        return k


def rewrite_comparisons(source: str) -> str:
    """Turns quantity/semver comparison calls into comparisons of their `order` fields, innermost first."""
    text = source
    for _ in range(_MAX_REWRITES):
        rewritten = _rewrite_one(text)
        if rewritten is None:
            return text
        text = rewritten
    return text


def _rewrite_one(text: str) -> str | None:
    try:
        tokens = tokenize(text)
    except ValueError:
        return None
    matches = _matches(tokens)
    if matches is None:
        return None
    for k in range(len(tokens) - 2, 0, -1):  # last first: arguments are rewritten before their callers
        name = tokens[k]
        if name.kind != "ident" or name.text not in _COMPARISONS or tokens[k - 1].text != ".":
            continue
        if tokens[k + 1].text != "(" or k + 1 not in matches:
            continue
        close = matches[k + 1]
        inner = tokens[k + 2 : close]
        depth = 0
        single = bool(inner)
        for token in inner:
            if token.kind == "punct" and token.text in "([{":
                depth += 1
            elif token.kind == "punct" and token.text in ")]}":
                depth -= 1
            elif token.kind == "punct" and token.text == "," and depth == 0:
                single = False
        start = _receiver_start(tokens, matches, k - 1)
        if not single or start is None:
            continue
        receiver = text[tokens[start].start : tokens[k - 1].start]
        argument = text[tokens[k + 2].start : tokens[close - 1].end]
        left, right = f"({receiver}).order", f"({argument}).order"
        if name.text == "isGreaterThan":
            replacement = f"({left} > {right})"
        elif name.text == "isLessThan":
            replacement = f"({left} < {right})"
        else:
            replacement = f"({left} > {right} ? 1 : ({left} < {right} ? -1 : 0))"
        return text[: tokens[start].start] + replacement + text[tokens[close].end :]
    return None


def typed_device_fields(source: str) -> str | None:
    """`source` with every `device.<field>` written `device_<field>` (same length, so positions hold), for
    type-checking against one variable per field; None when `device` is used any other way (bare, indexed,
    spaced), where only the untyped check applies."""
    try:
        tokens = tokenize(source)
    except ValueError:
        return None
    text = list(source)
    for k, token in enumerate(tokens):
        if token.kind != "ident" or token.text != "device":
            continue
        if k > 0 and tokens[k - 1].text == "." and tokens[k - 1].kind == "punct":
            continue  # a member named `device`, e.g. attributes["d"].device
        dot = tokens[k + 1] if k + 1 < len(tokens) else None
        field = tokens[k + 2] if k + 2 < len(tokens) else None
        if (
            dot is None
            or dot.text != "."
            or dot.start != token.end
            or field is None
            or field.kind != "ident"
            or field.start != dot.end
            or field.text not in DEVICE_FIELDS
        ):
            return None
        text[dot.start] = "_"
    return "".join(text)
