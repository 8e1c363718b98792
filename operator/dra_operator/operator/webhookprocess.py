"""The admission server's own process: the operator starts it, feeds it the names reviews read, and starts it
again if it dies; the process serves reviews and reports each one's duration back.

Why a process: a review is short (about half a millisecond of our own work), but on a thread beside the
reconciler it waited for the interpreter lock, and the API server measured 17 ms p50 and 333 ms p99 for each
Pod create at 36 Pods/s (bench/README.md). A process of its own competes only for a core, which the kernel
hands out in microseconds. It imports the admission code alone (no Kopf, no allocator), reads no cluster
object but what the operator sends (see dra_operator.admission.mirror), and asks the API server itself only
for the ownership rule's rare look-up of a built-in claim.

The wire: a socket pair, one JSON object per line both ways. The child says `listening` (or `failed`) once,
then `reviewed` per answer; the operator sends mirror messages. The child leaves when the operator's end
closes, however the operator ended, and ignores SIGINT/SIGTERM sent to the whole process group.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dra_operator.admission.mirror import NameMirror
from dra_operator.admission.server import RELOAD_CHECK_SECONDS, AdmissionServer
from dra_operator.admission.webhook import AdmissionContext
from dra_operator.tlsbuffers import size_read_buffers

log = logging.getLogger(__name__)

Json = dict[str, Any]

#: How long the child may take to listen (it imports the admission code and loads the certificate).
START_SECONDS = 30.0
#: Waits before starting a dead child again: none after a child that served this long, else 0.5 s doubling
#: to RESTART_BACKOFF_MAX (also between starts that fail).
STEADY_SECONDS = 30.0
RESTART_BACKOFF_MAX = 10.0


@dataclass(frozen=True)
class ChildOptions:
    """What the child is started with; `port` 0 picks a free one, which every later start then keeps."""

    host: str
    port: int
    cert: Path
    key: Path
    builtin_dra: bool = False
    delivery_resource: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    log_level: str = "INFO"
    reload_check_seconds: float = RELOAD_CHECK_SECONDS
    # Descriptors the child must inherit (in-memory certificate files, see tls.inherited_fds).
    pass_fds: tuple[int, ...] = field(default=())

    def argv(self, fd: int) -> list[str]:
        args = [
            sys.executable,
            "-m",
            __name__,
            f"--fd={fd}",
            f"--host={self.host}",
            f"--port={self.port}",
            f"--cert={self.cert}",
            f"--key={self.key}",
            f"--log-level={self.log_level}",
            f"--reload-check-seconds={self.reload_check_seconds}",
        ]
        if self.builtin_dra:
            args.append("--builtin-dra")
        if self.delivery_resource:
            args.append(f"--delivery-resource={self.delivery_resource}")
        if self.kubeconfig:
            args.append(f"--kubeconfig={self.kubeconfig}")
        if self.context:
            args.append(f"--context={self.context}")
        return args


class ChildFailed(RuntimeError):
    """The admission process did not start listening."""


class AdmissionProcess:
    """The operator's side: starts the child, sends it messages, reads its reports, replaces it when it dies.

    `snapshot` returns the messages that bring a fresh child's mirror up to date (each start sends them
    first); `send` between starts is dropped, since the next snapshot carries it.
    """

    def __init__(
        self,
        options: ChildOptions,
        snapshot: Callable[[], list[Json]],
        on_review: Callable[[str, float], None] = lambda route, seconds: None,
    ) -> None:
        self.options = options
        self._snapshot = snapshot
        self._on_review = on_review
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self.starts = 0

    @property
    def port(self) -> int:
        return self.options.port

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Start the child and wait until it listens; raises ChildFailed when it cannot."""
        reader = await self._spawn()
        self._watcher = asyncio.create_task(self._watch(reader), name="admission-process")

    def send(self, message: Json) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def stop(self, grace: float = 5.0) -> int | None:
        """Close our end (the child leaves on its own), then wait for it, killing it after `grace` seconds;
        its exit code (None if none was running)."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        return await self._end(grace)

    async def _end(self, grace: float) -> int | None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        process, self._process = self._process, None
        if process is None:
            return None
        if process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                process.kill()
                await process.wait()
        return process.returncode

    async def _spawn(self) -> asyncio.StreamReader:
        ours, theirs = socket.socketpair()
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self.options.argv(theirs.fileno()),
                pass_fds=(theirs.fileno(), *self.options.pass_fds),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        reader, self._writer = await asyncio.open_connection(sock=ours, limit=1 << 20)
        try:
            line = await asyncio.wait_for(_next_line(reader), START_SECONDS)
        except TimeoutError:
            line = b""
        try:
            first = json.loads(line) if line.strip() else {"error": "it exited or did not answer"}
        except ValueError:
            first = {"error": f"it said {line!r:.200}"}
        if first.get("op") != "listening":
            await self._end(grace=1.0)
            raise ChildFailed(f"the admission process did not start: {first.get('error')}")
        self.starts += 1
        self.options = replace(self.options, port=int(first["port"]))
        for message in self._snapshot():
            self.send(message)
        log.info("admission process %d listening on port %d", self.pid, self.port)
        return reader

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        delay = 0.5
        started = time.monotonic()
        while True:
            while line := await _next_line(reader):
                try:
                    report = json.loads(line)
                    if report.get("op") == "reviewed":
                        self._on_review(str(report["route"]), float(report["seconds"]))
                except (ValueError, KeyError, TypeError, AttributeError):
                    log.warning("unreadable report from the admission process: %.200r", line)
            if self._stopping:
                return
            code = self._process.returncode if self._process is not None else None
            log.error("admission process ended (exit code %s): starting another", code)
            await self._end(grace=1.0)
            if time.monotonic() - started < STEADY_SECONDS:  # it keeps dying: no restart loop at full speed
                log.error(
                    "admission process ended within %.0f s of its start; waiting %.1f s",
                    STEADY_SECONDS,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_BACKOFF_MAX)
            else:
                delay = 0.5
            while True:
                try:
                    reader = await self._spawn()
                    started = time.monotonic()
                    break
                except (ChildFailed, OSError) as exc:
                    log.error("%s; retrying in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RESTART_BACKOFF_MAX)


async def _next_line(reader: asyncio.StreamReader) -> bytes:
    """The child's next line, or b"" once it is gone: a child that dies with our messages unread resets the
    connection (ECONNRESET) instead of closing it, which is its end all the same."""
    try:
        return await reader.readline()
    except (ConnectionError, OSError):
        return b""
    except ValueError:  # a line past the reader's limit: not the child we started; replace it
        log.error("the admission process wrote an overlong line")
        return b""


# ------------------------------------------------------------------------------------------ the child


class BuiltinGetter:
    """GETs of built-in DRA objects (the ownership rule's look-up), through a client made at the first one,
    on the loop that asks (the admission server's)."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        self._kubeconfig, self._context = kubeconfig, context
        self._kube: Any = None
        self._lock: asyncio.Lock | None = None

    async def get(self, path: str) -> Json | None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._kube is None:
                # Imported here: a cluster without built-in DRA never asks, and the child stays small.
                from kubernetes_asyncio import client as k8s

                from dra_operator.kube.client import Kube, load_configuration

                cfg = await load_configuration(self._kubeconfig, self._context)
                self._kube = Kube(k8s.ApiClient(cfg), timeout=3.0)
        found: Json | None = await self._kube.get(path)
        return found


class Reports:
    """The child's reports to the operator, sent from a thread of their own: a review never waits on the
    socket, whatever the operator's loop is doing."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self._queue: queue.SimpleQueue[Json | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._send, name="reports", daemon=True)
        self._thread.start()

    def put(self, report: Json) -> None:
        self._queue.put(report)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _send(self) -> None:
        while (report := self._queue.get()) is not None:
            try:
                self._channel.sendall(json.dumps(report, separators=(",", ":")).encode() + b"\n")
            except OSError:
                return  # the operator is gone; the reading side notices and ends the process


def child_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m " + __name__, description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="our end of the socket pair")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--builtin-dra", action="store_true")
    parser.add_argument("--delivery-resource", default=None)
    parser.add_argument("--kubeconfig", default=None)
    parser.add_argument("--context", default=None)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--reload-check-seconds", type=float, default=RELOAD_CHECK_SECONDS)
    args = parser.parse_args(argv)

    from dra_operator.operator import logs

    logs.setup(args.log_level)
    size_read_buffers()
    # The operator decides when this process ends (by closing the socket): a Ctrl-C or SIGTERM sent to the
    # whole group must not take admission down before the operator has stopped.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    channel = socket.socket(fileno=args.fd)
    reports = Reports(channel)
    mirror = NameMirror()
    ctx = AdmissionContext(
        caches=mirror,
        ready=mirror.ready,
        builtin_get=BuiltinGetter(args.kubeconfig, args.context).get if args.builtin_dra else None,
        builtin_dra=args.builtin_dra,
        delivery_resource=args.delivery_resource,
    )
    server = AdmissionServer(
        ctx,
        args.host,
        args.port,
        args.cert,
        args.key,
        on_review=lambda route, seconds: reports.put({"op": "reviewed", "route": route, "seconds": seconds}),
        reload_check_seconds=args.reload_check_seconds,
    )
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        cause = exc.__cause__ or exc
        reports.put({"op": "failed", "error": f"{exc}: {cause}" if cause is not exc else str(exc)})
        reports.close()
        return 1
    reports.put({"op": "listening", "port": server.port})
    try:
        with channel.makefile("rb") as lines:
            for line in lines:
                try:
                    mirror.apply(json.loads(line))
                except ValueError as exc:  # UnknownMessage or bad JSON: an operator bug, not worth dying for
                    log.warning("mirror message ignored: %s", exc)
    finally:
        server.stop()
        reports.close()
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
