"""What the demo prints: step headers, commands as a user types them with their output, aligned tables."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

INDENT = "  "


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, separated by three spaces (kubectl's layout)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = []
    for row in (headers, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


class Console:
    """Writes to one stream; bold and dim only on a terminal (and never with NO_COLOR set)."""

    def __init__(self, stream: TextIO | None = None, total_steps: int = 0) -> None:
        self.stream = stream or sys.stdout
        self.styled = self.stream.isatty() and "NO_COLOR" not in os.environ
        self.total_steps = total_steps
        self.step_number = 0
        # A progress line rewritten in place (terminals only) must be cleared before anything else is printed.
        self._status_shown = False

    def _style(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.styled else text

    def print(self, text: str = "") -> None:
        self.clear_status()
        print(text, file=self.stream, flush=True)

    def title(self, text: str) -> None:
        self.print(self._style("1", text))

    def step(self, title: str) -> None:
        self.step_number += 1
        self.print()
        self.print(self._style("1;34", f"[{self.step_number}/{self.total_steps}] {title}"))

    def info(self, text: str) -> None:
        for line in text.splitlines() or [""]:
            self.print(INDENT + line)

    def note(self, text: str) -> None:
        for line in text.splitlines():
            self.print(INDENT + self._style("2", "# " + line))

    def check(self, text: str) -> None:
        self.print(INDENT + self._style("32", "✓ ") + text)

    def command(self, text: str) -> None:
        self.print(INDENT + self._style("1", "$ " + text))

    def output(self, text: str) -> None:
        for line in text.rstrip("\n").splitlines():
            self.print(INDENT + line)

    def status(self, text: str) -> None:
        """A progress line: rewritten in place on a terminal, a plain line otherwise."""
        if self.styled:
            print("\r\033[K" + INDENT + self._style("2", text), end="", file=self.stream, flush=True)
            self._status_shown = True
        else:
            print(INDENT + text, file=self.stream, flush=True)

    def clear_status(self) -> None:
        if self._status_shown:
            print("\r\033[K", end="", file=self.stream, flush=True)
            self._status_shown = False
