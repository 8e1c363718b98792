"""The demo's child processes (node agents, the operator): started with a log file each, stopped for sure."""

from __future__ import annotations

from pathlib import Path
from types import FrameType

from dra_operator.operator.local import LocalProcess, ProcessExited

_STOP_GRACE = 15.0


class Interrupted(Exception):
    """SIGTERM, raised as an exception (like Ctrl-C's KeyboardInterrupt) so every `finally` runs."""


def raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted


class DemoError(RuntimeError):
    """Something the demo waited for did not happen; the message says what, and where the logs are."""


class Children:
    """Processes started by the demo (dra_operator.operator.local: each in its own process group, so Ctrl-C
    reaches only the demo, which stops them in order; each dies with the demo if the demo is killed)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[LocalProcess] = []

    def start(self, child: LocalProcess) -> LocalProcess:
        self.children.append(child.start())
        return child

    def check(self) -> None:
        """Raise DemoError, with the log's tail, if a child has exited."""
        for child in self.children:
            try:
                child.check()
            except ProcessExited as exited:
                raise DemoError(str(exited)) from None

    def stop(self) -> None:
        """SIGTERM every child (newest first), SIGKILL the ones still there after a grace period."""
        for child in reversed(self.children):
            child.terminate()
        for child in reversed(self.children):
            child.stop(timeout=_STOP_GRACE)
        self.children.clear()
