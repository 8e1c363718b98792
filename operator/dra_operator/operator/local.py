"""`dra-operator` as a local process against a kubeconfig (the operator, or an agent): for the demo,
benchmarks and tests. Each has its own process group and log file, dies with its parent, stops for sure."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import dra_operator
from dra_operator.controlplane.launcher import die_with_parent, free_port

__all__ = [
    "READY_METRICS",
    "LocalOperator",
    "LocalProcess",
    "ProcessExited",
    "child_env",
    "cli_command",
    "free_port",
    "scrape_metrics",
    "tail",
]

# The operator is ready when all three are 1: caches filled, Lease held, webhook configuration written.
READY_METRICS = ("dra_operator_ready", "dra_operator_leader", "dra_operator_webhook_configured")


class ProcessExited(RuntimeError):
    """A local process that should be running has exited; the message has its exit code and log's tail."""


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def cli_command(*args: str) -> list[str]:
    """`dra-operator ARGS` through this interpreter, so the children run the same code as their parent."""
    return [sys.executable, "-m", "dra_operator.cli", *args]


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment), made to run this package unbuffered."""
    env = {**(os.environ if base is None else base), "PYTHONUNBUFFERED": "1"}
    # The source root of this very package first: a checkout run without installation works too.
    source_root = str(Path(dra_operator.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)
    return env


def metrics_page(port: int, host: str = "127.0.0.1") -> str:
    """The text served on `host`:`port`/metrics; raises OSError while nothing answers."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2) as response:
        text: str = response.read().decode()
    return text


def scrape_metrics(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """The Prometheus samples served on `host`:`port`/metrics ({} while nothing answers)."""
    try:
        text = metrics_page(port, host)
    except OSError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


class LocalProcess:
    """`dra-operator ARGS` as a child process, its output appended to `log_file`.

    It has its own process group (Ctrl-C reaches only the parent, which stops it; stop() signals the whole
    group) and is killed by the kernel when the thread that started it dies (PR_SET_PDEATHSIG): start it
    from a thread that outlives it. start() again after stop() or kill() runs it anew with the same args."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        log_file: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> None:
        self.args = list(args)
        self.log_file = log_file
        self.env = child_env(env)
        self.cwd = cwd
        self.name = name or log_file.stem
        self.process: subprocess.Popen[bytes] | None = None
        self._terminated: int | None = None  # the pid terminate() signalled

    def start(self) -> Self:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(
                cli_command(*self.args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=die_with_parent,  # only calls prctl(2)
            )
        return self

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check(self) -> None:
        """Raise ProcessExited, with the log's tail, if the process has exited."""
        if self.process is not None and (code := self.process.poll()) is not None:
            raise ProcessExited(
                f"{self.name} exited with code {code}; last lines of {self.log_file}:\n" + self.log()
            )

    def log(self, lines: int = 40) -> str:
        return tail(self.log_file, lines)

    def _signal_group(self, signum: int) -> None:
        # Only while the leader runs: once it is reaped its pid (the group's id) may belong to someone else.
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def terminate(self) -> None:
        """SIGTERM the process group, without waiting (stop() waits)."""
        self._signal_group(signal.SIGTERM)
        if self.process is not None:
            self._terminated = self.process.pid

    def kill(self) -> None:
        """SIGKILL the process group (no clean shutdown: what a crash or `kill -9` does) and reap it."""
        self._signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (unless terminate() did), wait up to `timeout` seconds, then SIGKILL."""
        if self.process is None:
            return
        if self._terminated != self.process.pid:
            self.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


class LocalOperator(LocalProcess):
    """`dra-operator run` against `kubeconfig` (None: $KUBECONFIG of `env`), webhook and metrics on
    127.0.0.1 (free ports unless given); `extra_args` follow (e.g. --lease-namespace, or a chart's flags)."""

    def __init__(
        self,
        kubeconfig: Path | str | None,
        *,
        log_file: Path,
        webhook_port: int | None = None,
        metrics_port: int | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str = "operator",
    ) -> None:
        self.webhook_port = webhook_port or free_port()
        self.metrics_port = metrics_port or free_port()
        args = [
            "run",
            *([f"--kubeconfig={kubeconfig}"] if kubeconfig is not None else []),
            "--webhook-host=127.0.0.1",
            f"--webhook-port={self.webhook_port}",
            "--metrics-host=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            *extra_args,
        ]
        super().__init__(args, log_file=log_file, env=env, cwd=cwd, name=name)

    def metrics(self) -> dict[str, float]:
        return scrape_metrics(self.metrics_port)

    def ready(self) -> bool:
        """Ready, leading and webhook configured; raises ProcessExited if the operator has exited."""
        self.check()
        values = self.metrics()
        return all(values.get(name) == 1.0 for name in READY_METRICS)

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait until ready(); TimeoutError (with the log's tail) after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                what = f"{self.name} not ready after {timeout:.0f}s; last lines of {self.log_file}"
                raise TimeoutError(f"{what}:\n{self.log()}")
            time.sleep(0.2)
