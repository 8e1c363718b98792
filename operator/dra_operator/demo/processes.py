"""The demo's child processes (node agents, the operator): started with a log file each, stopped for sure."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import dra_operator
from dra_operator.controlplane.launcher import _die_with_parent

_STOP_GRACE = 15.0


class Interrupted(Exception):
    """SIGTERM, raised as an exception (like Ctrl-C's KeyboardInterrupt) so every `finally` runs."""


def raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted


class DemoError(RuntimeError):
    """Something the demo waited for did not happen; the message says what, and where the logs are."""


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def cli_command(*args: str) -> list[str]:
    """`dra-operator ARGS` through this interpreter, so the children run the same code as the demo."""
    return [sys.executable, "-m", "dra_operator.cli", *args]


def child_env(base: dict[str, str]) -> dict[str, str]:
    """`base` (the control plane's: KUBECONFIG, PATH with kubectl), made to run this package unbuffered."""
    env = {**base, "PYTHONUNBUFFERED": "1"}
    # The source root of this very package first: a checkout run without installation works too.
    source_root = str(Path(dra_operator.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)
    return env


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


class Children:
    """Processes started by the demo. Each has its own process group (Ctrl-C reaches only the demo, which
    stops them in order) and dies with the demo if the demo is killed (PR_SET_PDEATHSIG)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Child:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # only calls prctl(2)
            )
        child = Child(name, process, log)
        self.children.append(child)
        return child

    def check(self) -> None:
        """Raise DemoError, with the log's tail, if a child has exited."""
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise DemoError(
                    f"{child.name} exited with code {code}; last lines of {child.log}:\n" + tail(child.log)
                )

    def stop(self) -> None:
        """SIGTERM every child (newest first), SIGKILL the ones still there after a grace period."""
        for child in reversed(self.children):
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGTERM)
        for child in reversed(self.children):
            try:
                child.process.wait(timeout=_STOP_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
        self.children.clear()
