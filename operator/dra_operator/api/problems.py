"""Validation problems as users read them: each failing field as a Kubernetes field path with its message,
and the error that carries them. Its own module so that code which only reports problems (the admission
process) does not load every DRA model with it."""

from __future__ import annotations

from pydantic import ValidationError


class InvalidObject(ValueError):
    """An object that does not validate; the message names source, kind, name and each failing field path."""

    def __init__(
        self,
        problems: list[tuple[str, str]],
        *,
        kind: str | None = None,
        name: str | None = None,
        source: str | None = None,
    ) -> None:
        self.problems = problems
        self.kind = kind
        self.name = name
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = [
            part for part in (self.source, self.kind and f"{self.kind} {self.name or '<unnamed>'}") if part
        ]
        head = ": ".join(where) if where else "invalid object"
        lines = [f"{path}: {message}" if path else message for path, message in self.problems]
        if len(lines) == 1:
            return f"{head}: {lines[0]}"
        return head + ":\n" + "\n".join(f"  - {line}" for line in lines)


def format_location(loc: tuple[int | str, ...]) -> str:
    """pydantic's error location as a Kubernetes field path: spec.devices.requests[0].exactly."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif str(part).startswith(("function-", "[key]")):
            continue
        else:
            path += f".{part}" if path else str(part)
    return path


def problems_of(error: ValidationError) -> list[tuple[str, str]]:
    """(field path, message) for each error, without pydantic's "Value error, " prefix."""
    problems = []
    for item in error.errors(include_url=False):
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "missing":
            message = "required field is missing"
        problems.append((format_location(tuple(item["loc"])), message))
    return problems
