"""The control plane binaries, built (or found cached) with visible progress.

A cold build is long and `go build` prints nothing while it works, so the demo shows what the Go toolchain is
doing (read from /proc: the package being compiled, the binary being linked) as it goes.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dra_operator.controlplane import build
from dra_operator.demo.console import Console

_TERMINAL_TICK = 1.0  # a rewritten status line can change often
_PLAIN_TICK = 20.0  # a log (CI, a pipe) gets a line now and then


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


def _flag(argv: list[str], name: str) -> str | None:
    for index, word in enumerate(argv[:-1]):
        if word == name:
            return argv[index + 1]
    return None


@dataclass
class _Progress:
    packages: set[str] = field(default_factory=set)

    def describe(self) -> str:
        """What the toolchain under this process does right now, e.g. `compiling k8s.io/api/core/v1`."""
        doing = []
        children = _children_of(os.getpid())
        for _, name, argv in children:
            if name == "compile" and (package := _flag(argv, "-p")):
                self.packages.add(package)
                doing.append(f"compiling {package}")
            elif name == "link" and (output := _flag(argv, "-o")):
                doing.append(f"linking {Path(output).name}")
            elif name == "asm" and (package := _flag(argv, "-p")):
                doing.append(f"assembling {package}")
        if doing:
            return ", ".join(sorted(doing))
        if not any(name == "go" for _, name, _ in children):
            return "waiting for another build of the same binaries (it holds the lock)"
        return "downloading Go modules" if not self.packages else "preparing the next package"


def ensure_binaries(console: Console) -> build.BuildResult:
    """build.ensure_binaries in a worker thread while this thread reports progress every few seconds."""
    outcome: dict[str, object] = {}

    def work() -> None:
        try:
            outcome["result"] = build.ensure_binaries(progress=False)
        except BaseException as error:  # handed to the waiting thread, which raises it
            outcome["error"] = error

    worker = threading.Thread(target=work, name="controlplane-build", daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(timeout=2.0)  # a cache hit answers at once: no progress lines then
    if worker.is_alive():
        console.info(
            f"building Kubernetes {build.K8S_VERSION} and etcd {build.ETCD_VERSION} from Go modules into "
            f"{build.bin_dir()}"
        )
        console.note("one time only (tens of minutes on 2 cores); later runs reuse the binaries")
        progress = _Progress()
        tick = _TERMINAL_TICK if console.styled else _PLAIN_TICK
        while worker.is_alive():
            elapsed = int(time.monotonic() - started)
            doing = progress.describe()
            line = f"{elapsed // 60:d}m{elapsed % 60:02d}s  {len(progress.packages)} packages so far  {doing}"
            console.status(line[:150])
            worker.join(timeout=tick)
        console.clear_status()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    result = outcome["result"]
    assert isinstance(result, build.BuildResult)
    return result
