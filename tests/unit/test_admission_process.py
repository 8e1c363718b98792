"""The admission process: started by the operator, answering reviews over TLS from the names it is sent,
reporting each review, started again when it dies, leaving when the operator closes its end."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from test_admission_server import POD, admission_review

from dra_operator.admission import mirror, tls
from dra_operator.operator.webhookprocess import AdmissionProcess, ChildFailed, ChildOptions

Json = dict[str, Any]


def post(port: int, ca: bytes, body: bytes) -> Json:
    context = ssl.create_default_context(cadata=ca.decode())
    request = urllib.request.Request(
        f"https://127.0.0.1:{port}/mutate-pods", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as answer:
        found: Json = json.load(answer)
    return found


async def until(condition: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie is gone too: it only waits for its parent to read its exit code.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def options(certs: tls.CertFiles, port: int = 0) -> ChildOptions:
    return ChildOptions(
        host="127.0.0.1",
        port=port,
        cert=certs.cert,
        key=certs.key,
        pass_fds=tls.inherited_fds(certs),
        log_level="WARNING",
    )


def test_it_answers_from_the_names_it_is_sent_and_reports_every_review() -> None:
    certs = tls.in_memory(["127.0.0.1"])
    reviewed: list[tuple[str, float]] = []
    snapshot = [mirror.reset(), mirror.extended({"example.com/gpu": "gpu"}), mirror.ready()]

    async def test() -> None:
        process = AdmissionProcess(options(certs), lambda: snapshot, lambda r, s: reviewed.append((r, s)))
        await process.start()
        try:
            assert process.port > 0 and process.pid != os.getpid()
            answer = await asyncio.to_thread(post, process.port, certs.ca_bundle(), admission_review(POD))
            response = answer["response"]
            assert response["allowed"] is True and response["uid"] == "u-1"
            ops = json.loads(base64.b64decode(response["patch"]))
            assert any(op["path"] == "/spec/schedulingGates" for op in ops), ops
            await until(lambda: len(reviewed) == 1, "the review is reported")
            assert reviewed[0][0] == "mutate-pods" and 0 < reviewed[0][1] < 5
        finally:
            await process.stop()

    run(test)


@pytest.mark.parametrize("unread", [False, True], ids=["closed", "reset"])
def test_a_dead_process_is_replaced_on_the_same_port_with_the_names_sent_again(unread: bool) -> None:
    """`unread`: the child dies with messages it has not read, so its end resets the connection (ECONNRESET)
    instead of closing it: found in CI, where it ended the watching task and no child was started again."""
    certs = tls.in_memory(["127.0.0.1"])
    snapshots: list[int] = []

    def snapshot() -> list[Json]:
        snapshots.append(len(snapshots))
        return [mirror.reset(), mirror.ready()]

    async def test() -> None:
        process = AdmissionProcess(options(certs), snapshot)
        await process.start()
        first, port = process.pid, process.port
        assert first is not None
        try:
            if unread:
                os.kill(first, signal.SIGSTOP)
                process.send(mirror.ready())  # lands in its socket's receive queue, never read
            os.kill(first, signal.SIGKILL)
            killed = time.monotonic()
            await until(lambda: process.starts == 2, "a second process started")
            assert process.pid != first and process.port == port and len(snapshots) == 2
            # It died right after its start: the next one waits (a child that keeps dying is no busy loop).
            assert time.monotonic() - killed >= 0.5
            # Ready at once: a review that needs the caches is answered, not held for 3 s and refused.
            answer = await asyncio.to_thread(post, port, certs.ca_bundle(), admission_review(POD))
            assert answer["response"]["allowed"] is True
        finally:
            await process.stop()

    run(test)


def test_it_leaves_when_the_operator_closes_its_end_and_outlives_a_signal_to_the_group() -> None:
    certs = tls.in_memory(["127.0.0.1"])

    async def test() -> None:
        process = AdmissionProcess(options(certs), lambda: [mirror.ready()])
        await process.start()
        pid = process.pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)  # what a terminal or a container runtime may send to every process
        os.kill(pid, signal.SIGINT)
        answer = await asyncio.to_thread(post, process.port, certs.ca_bundle(), admission_review(POD))
        assert answer["response"]["allowed"] is True and process.starts == 1
        code = await process.stop(grace=10.0)  # closes the socket: the process leaves on its own
        assert code == 0 and gone(pid), f"exit code {code}"

    run(test)


def test_a_process_that_cannot_listen_says_why() -> None:
    certs = tls.in_memory(["127.0.0.1"])
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()

    async def test() -> None:
        process = AdmissionProcess(options(certs, port=taken.getsockname()[1]), lambda: [])
        with pytest.raises(ChildFailed, match="cannot listen"):
            await process.start()

    try:
        run(test)
    finally:
        taken.close()


def test_the_process_imports_the_admission_code_alone() -> None:
    """What the child imports is its memory (issue 14): no Kopf, no allocator, no HTTP framework, no API
    client (only the lazy stand-ins of kubernetes_asyncio's generated packages); CEL stays, for the
    selectors' compile check."""
    program = "import sys, dra_operator.operator.webhookprocess; print(' '.join(sys.modules))"
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    found = set(run.stdout.split())
    assert {"dra_operator.admission.webhook", "h11", "cel_expr_python"} <= found
    unwanted = [
        name
        for name in found
        if name.split(".")[0] in ("kopf", "aiohttp")
        or name.startswith(
            ("dra_operator.allocation", "dra_operator.operator.reconciler", "dra_operator.kube.client")
        )
        or (name.startswith("kubernetes_asyncio") and name.count(".") > 2)
    ]
    assert not unwanted, unwanted
