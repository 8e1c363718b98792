"""The control plane binaries, built (or found cached) with visible progress.

A cold build is long and `go build` prints nothing while it works, so the demo shows what the Go toolchain is
doing (read from /proc: the package being compiled, the binary being linked) as it goes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dra_operator.controlplane import build
from dra_operator.demo.console import Console

_TERMINAL_TICK = 1.0  # a rewritten status line can change often
_PLAIN_TICK = 20.0  # a log (CI, a pipe) gets a line now and then
_CLEANUP_WAIT = 15.0


def _children_of(root: int) -> list[tuple[int, str, list[str]]]:
    """(pid, command name, argv) of every descendant of `root`, read from /proc."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    found = []
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor is not None and ancestor != root and ancestor > 1:
            ancestor = parents.get(ancestor)
        if ancestor == root:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            words = [a.decode(errors="replace") for a in argv if a]
            if words:
                found.append((pid, Path(words[0]).name, words))
    return found


def _stop_descendants() -> None:
    for pid, _, _ in _children_of(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)


def _flag(argv: list[str], name: str) -> str | None:
    for index, word in enumerate(argv[:-1]):
        if word == name:
            return argv[index + 1]
    return None


@dataclass
class _Progress:
    compiled_any: bool = False

    def describe(self) -> str:
        """What the toolchain under this process does right now, e.g. `compiling k8s.io/api/core/v1`."""
        doing = []
        children = _children_of(os.getpid())
        for _, name, argv in children:
            if name == "compile" and (package := _flag(argv, "-p")):
                self.compiled_any = True
                doing.append(f"compiling {package}")
            elif name == "link" and (output := _flag(argv, "-o")):
                doing.append(f"linking {Path(output).name}")
            elif name == "asm" and (package := _flag(argv, "-p")):
                doing.append(f"assembling {package}")
        if doing:
            return ", ".join(sorted(doing))
        if not any(name == "go" for _, name, _ in children):
            return "waiting for another build of the same binaries (it holds the lock)"
        return "downloading Go modules" if not self.compiled_any else "preparing the next package"


def ensure_binaries(console: Console) -> build.BuildResult:
    """build.ensure_binaries in a worker thread while this thread reports progress every few seconds."""
    outcome: dict[str, object] = {}
    # An Event, not Thread.join: a join interrupted by Ctrl-C can leave is_alive() false on Python 3.11.
    done = threading.Event()

    def work() -> None:
        try:
            outcome["result"] = build.ensure_binaries(progress=False)
        except BaseException as error:  # handed to the waiting thread, which raises it
            outcome["error"] = error
        finally:
            done.set()

    started = time.monotonic()
    threading.Thread(target=work, name="controlplane-build", daemon=True).start()
    if not done.wait(timeout=2.0):  # a cache hit answers at once: no progress lines then
        console.info(
            f"building Kubernetes {build.K8S_VERSION} and etcd {build.ETCD_VERSION} from Go modules into "
            f"{build.bin_dir()}"
        )
        console.note("one time only (tens of minutes on 2 cores); later runs reuse the binaries")
        progress = _Progress()
        tick = _TERMINAL_TICK if console.styled else _PLAIN_TICK
        try:
            while not done.is_set():
                elapsed = int(time.monotonic() - started)
                console.status(f"{elapsed // 60:d}m{elapsed % 60:02d}s  {progress.describe()}"[:150])
                done.wait(timeout=tick)
        except BaseException:
            # Ctrl-C or SIGTERM: stop the toolchain (it shares our process group only on a terminal), then let
            # the build remove its temporary directory before the interpreter exits.
            console.clear_status()
            _stop_descendants()
            done.wait(timeout=_CLEANUP_WAIT)
            raise
        console.clear_status()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    result = outcome["result"]
    assert isinstance(result, build.BuildResult)
    return result
