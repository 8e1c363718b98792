"""Errors of the DRA CEL layer: compile errors carry expression and position, runtime ones device and key."""

from __future__ import annotations

__all__ = ["CelCompileError", "CelError", "CelEvaluationError"]


def _short(expression: str, limit: int = 200) -> str:
    flat = " ".join(expression.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class CelError(ValueError):
    """Base class: something is wrong with a CEL selector."""

    def __init__(self, expression: str, reason: str) -> None:
        self.expression = expression
        self.reason = reason
        super().__init__(self._render())

    def _render(self) -> str:
        return f"CEL expression {_short(self.expression)!r}: {self.reason}"


class CelCompileError(CelError):
    """The expression does not compile; `line`/`column` (1-based) locate the problem when known."""

    def __init__(
        self, expression: str, reason: str, line: int | None = None, column: int | None = None
    ) -> None:
        self.line = line
        self.column = column
        super().__init__(expression, reason)

    def _render(self) -> str:
        where = f" at line {self.line}, column {self.column}" if self.line is not None else ""
        text = f"CEL expression {_short(self.expression)!r} does not compile{where}: {self.reason}"
        if self.line is not None and self.column is not None:
            lines = self.expression.splitlines() or [""]
            if 1 <= self.line <= len(lines):
                source = lines[self.line - 1]
                text += f"\n | {source}\n | {'.' * (self.column - 1)}^"
        return text


class CelEvaluationError(CelError):
    """Evaluating the expression on a device failed; `key` is the missing map key when that was the cause."""

    def __init__(self, expression: str, device: str, reason: str, key: str | None = None) -> None:
        self.device = device
        self.key = key
        super().__init__(expression, reason)

    def _render(self) -> str:
        return f"CEL expression {_short(self.expression)!r} failed on device {self.device}: {self.reason}"
