"""Compiling DRA CEL selectors once (cached by expression) and evaluating them on devices.

Compilation type-checks the original text (so error positions are the user's), rejects expressions whose
result type is neither bool nor dyn (once more with `device`'s fields typed as in Kubernetes), and then
compiles a second, optimized text for evaluation: literal `quantity()`/`semver()` calls turned into
constants, their comparison members into string comparisons.
Evaluation turns every failure into a CelEvaluationError that names the expression, the device and, for a
missing key, the key ("no such key: memory", Kubernetes' words).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Final

from cel_expr_python import cel

from dra_operator.cel.device import CelDevice
from dra_operator.cel.errors import CelCompileError, CelEvaluationError
from dra_operator.cel.library import environment, typed_environment
from dra_operator.cel.source import analyze, position, rewrite_comparisons, typed_device_fields

__all__ = ["MAX_EXPRESSION_LENGTH", "CompiledSelector", "compile_selector"]

# Kubernetes' CELSelectorExpressionMaxLength (bytes). cel-cpp has no estimated-cost limit like Kubernetes'
# 1,000,000; this length cap plus cel-cpp's fixed runtime budgets (10,000 comprehension iterations per
# evaluation, nesting depth 32) bound what one evaluation can cost.
MAX_EXPRESSION_LENGTH: Final = 10 * 1024

_POSITION = re.compile(r"<input>:(-?\d+):(-?\d+): (.*)")
_STATUS = re.compile(r"^[A-Z_]+: ")
_STATUS_SUFFIX = re.compile(r"\s*\[[A-Z_]+\]\s*$")  # cel-cpp's status code: [INVALID_ARGUMENT], [CANCELLED]
_MISSING_KEY = re.compile(r'Key not found in map ?: ?"?(.*?)"?$')
_NO_SUCH_KEY = re.compile(r"no such key: ?(.*)$")
_ERROR_TYPE: Final[Any] = cel.Type.ERROR


def _compile_failure(expression: str, err: Exception) -> CelCompileError:
    text = str(err)
    found = _POSITION.search(text)
    if found is None:
        reason = _STATUS_SUFFIX.sub("", _STATUS.sub("", text.splitlines()[0] if text else repr(err)))
        return CelCompileError(expression, reason.strip())
    line, column = int(found.group(1)), int(found.group(2))
    reason = found.group(3).strip()
    if line < 1 or column < 1:
        return CelCompileError(expression, reason)
    return CelCompileError(expression, reason, line, column)


def _type_name(cel_type: Any) -> str:
    name = str(cel_type.name() or "")
    # cel-cpp spells built-in types in capitals (STRING); message types keep their names, as cel-go prints
    # them (kubernetes.Quantity).
    return (name.lower() if name.isupper() else name) or str(cel_type)


class CompiledSelector:
    """One compiled selector expression; `evaluate` it on any number of devices."""

    __slots__ = ("_domains", "_env", "_program", "expression")

    expression: str

    def __init__(self, expression: str, program: Any, domains: frozenset[str], env: Any) -> None:
        self.expression = expression
        self._program = program
        self._domains = domains
        self._env = env

    def evaluate(self, device: CelDevice) -> bool:
        """True/False, or CelEvaluationError (missing key, runtime budget, non-bool result, ...)."""
        if device.binding_error is not None:
            raise CelEvaluationError(self.expression, device.name, device.binding_error)
        activation = device.activation(self._env, self._domains)
        try:
            result = self._program.eval(activation)
        except RuntimeError as err:
            raise self._runtime_failure(device, str(err)) from None
        value = result.value()
        if value is True or value is False:
            return bool(value)
        cel_type = result.type()
        if cel_type == _ERROR_TYPE:
            raise self._runtime_failure(device, str(value))
        raise CelEvaluationError(
            self.expression, device.name, f"must evaluate to bool, not {_type_name(cel_type)}"
        )

    def _runtime_failure(self, device: CelDevice, message: str) -> CelEvaluationError:
        message = _STATUS.sub("", message.strip()).replace(" [INTERNAL]", "").strip()
        missing = _MISSING_KEY.search(message) or _NO_SUCH_KEY.search(message)
        if missing is not None:
            key = missing.group(1)
            return CelEvaluationError(self.expression, device.name, f"no such key: {key}", key=key)
        if "budget exceeded" in message or "limit exceeded" in message:
            message = f"runtime cost limit exceeded ({message})"
        return CelEvaluationError(self.expression, device.name, message)

    def __repr__(self) -> str:
        return f"CompiledSelector({self.expression!r})"


def _check_types(expression: str) -> None:
    """Type-check with Kubernetes' field types of `device` (the evaluation environment sees them as dyn)."""
    typed = typed_device_fields(expression)
    if typed is None:
        return
    try:
        checked = typed_environment().compile(typed)
    except Exception as err:  # cel-expr-python raises RuntimeError for every compile failure
        failure = _compile_failure(expression, err)
        # Positions are the user's (same length); the message may name a renamed variable.
        failure.reason = failure.reason.replace("device_", "device.")
        raise CelCompileError(expression, failure.reason, failure.line, failure.column) from None
    result_type = _type_name(checked.return_type())
    if result_type not in ("bool", "dyn"):
        raise CelCompileError(expression, f"must evaluate to bool or the unknown type, not {result_type}")


@lru_cache(maxsize=4096)
def compile_selector(expression: str) -> CompiledSelector:
    """Compiles (and caches) a selector; raises CelCompileError naming the expression and the position."""
    if not isinstance(expression, str):
        raise CelCompileError(repr(expression), "a CEL expression must be a string")
    try:
        size = len(expression.encode())
    except UnicodeEncodeError as err:  # a lone surrogate, e.g. from a "\ud800" escape in YAML or JSON
        bad = err.object[err.start]
        raise CelCompileError(
            expression.encode(errors="backslashreplace").decode(),
            f"expression is not valid Unicode text (character {bad!r} at offset {err.start})",
        ) from None
    if size > MAX_EXPRESSION_LENGTH:
        raise CelCompileError(
            expression, f"expression is {size} bytes long, more than the limit of {MAX_EXPRESSION_LENGTH}"
        )
    if not expression.strip():
        raise CelCompileError(expression, "expression is empty")
    env = environment()
    try:
        checked = env.compile(expression)
    except Exception as err:  # cel-expr-python raises RuntimeError for every compile failure
        raise _compile_failure(expression, err) from None
    result_type = checked.return_type()
    if _type_name(result_type) not in ("bool", "dyn"):
        raise CelCompileError(
            expression, f"must evaluate to bool or the unknown type, not {_type_name(result_type)}"
        )
    analysis = analyze(expression)
    if analysis.bad_field is not None:
        line, column = position(expression, analysis.bad_field.start)
        raise CelCompileError(
            expression,
            f"undefined field '{analysis.bad_field.text}'"
            " (device has driver, attributes, capacity and allowMultipleAllocations)",
            line,
            column,
        )
    _check_types(expression)
    # Optimizations that remove Python callbacks (and cel-expr-python's per-call leak); each is only kept when
    # the result compiles, so they can never turn a valid expression into an invalid one.
    program = checked
    for candidate in (rewrite_comparisons(analysis.folded), analysis.folded):
        if candidate == expression:
            break
        try:
            program = env.compile(candidate)
        except Exception:  # fall back to the less optimized text
            continue
        break
    return CompiledSelector(expression, program, analysis.domains, env)
