"""The admission HTTPS server: a thread and event loop of its own, in the admission process
(dra_operator.operator.webhookprocess), whose main thread reads what the operator sends; a Pod create waits
for our answer, so nothing else runs there.

Certificates are read from files (generated in memory, or mounted from a Secret such as cert-manager's); a
rotated pair is picked up at the next TLS handshake after the files change, without closing the listener.

HTTP/1.1 is spoken by h11 over asyncio's TLS streams: the API server POSTs one review at a time per
connection and keeps connections alive. aiohttp's server did the same and cost the admission process about
10 MiB of its imports (issue 14).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import h11

from dra_operator.admission.webhook import ROUTES, AdmissionContext, answer

log = logging.getLogger(__name__)

Json = dict[str, Any]

#: How often a handshake may look whether the certificate files changed.
RELOAD_CHECK_SECONDS = 10.0
#: The largest review read: an object and its old version (etcd keeps each under 1.5 MiB) and the review.
MAX_BODY_BYTES = 8 << 20
#: The largest request line and headers.
MAX_HEADER_BYTES = 64 << 10
#: A kept-alive connection that sends no request for this long is closed (as aiohttp's server did).
IDLE_SECONDS = 75.0
#: A request whose next bytes take longer than this is given up.
READ_SECONDS = 30.0
READ_CHUNK = 64 << 10


class RotatingContext:
    """A server SSL context that follows its certificate files: every handshake passes through
    `sni_callback` (OpenSSL calls it with or without SNI), which swaps in a context built from the files
    when they changed since the last look."""

    def __init__(self, cert: Path, key: Path, check_seconds: float = RELOAD_CHECK_SECONDS) -> None:
        self._cert, self._key, self._check_seconds = cert, key, check_seconds
        self._loaded = self._read()
        self._current = self._build()
        self._next_check = time.monotonic() + check_seconds
        self.context = self._build()
        self.context.sni_callback = self._on_hello

    def _read(self) -> tuple[bytes, bytes]:
        return self._cert.read_bytes(), self._key.read_bytes()

    def _build(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._cert, self._key)
        return context

    def _on_hello(self, connection: Any, _server_name: str | None, _context: ssl.SSLContext) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._check_seconds
            try:
                pair = self._read()
                if pair != self._loaded:
                    self._current = self._build()
                    self._loaded = pair
                    log.info("serving certificate reloaded from %s", self._cert)
            except (OSError, ssl.SSLError) as exc:  # half-written files: keep the last good pair
                log.warning("serving certificate not reloaded: %s", exc)
        connection.context = self._current


class AdmissionServer:
    """Serves `ROUTES` over HTTPS on a thread of its own; `start` returns once it listens."""

    def __init__(
        self,
        ctx: AdmissionContext,
        host: str,
        port: int,
        cert: Path,
        key: Path,
        *,
        on_review: Callable[[str, float], None] = lambda route, seconds: None,
        reload_check_seconds: float = RELOAD_CHECK_SECONDS,
    ) -> None:
        self._ctx = ctx
        self._host, self.port = host, port
        self._tls = RotatingContext(cert, key, reload_check_seconds)
        self._on_review = on_review
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._listening = threading.Event()
        self._failure: BaseException | None = None
        # The open connections, each with its handler.
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[Any] | None] = {}

    def start(self, timeout: float = 10.0) -> None:
        """Listen (port 0 picks a free one, then in `port`); raises when the address cannot be bound."""
        self._thread = threading.Thread(target=self._serve, name="admission", daemon=True)
        self._thread.start()
        if not self._listening.wait(timeout):
            raise RuntimeError(
                f"the admission server did not listen on {self._host}:{self.port} in {timeout} s"
            )
        if self._failure is not None:
            raise RuntimeError(f"the admission server cannot listen on {self._host}:{self.port}") from (
                self._failure
            )

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start(), or logged if it failed later
            self._failure = exc
            if self._listening.is_set():
                log.exception("the admission server stopped")
            self._listening.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(
            self._connection, self._host, self.port, ssl=self._tls.context, reuse_address=True
        )
        try:
            self.port = int(server.sockets[0].getsockname()[1])
            self._listening.set()
            await self._stop.wait()
        finally:
            server.close()
            for writer in self._connections:
                writer.close()
            # Each handler then sees its stream end and returns; asyncio.run cancels any still waiting.
            handlers = [task for task in self._connections.values() if task is not None]
            if handlers:
                await asyncio.wait(handlers, timeout=1.0)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection: requests one after another while the client keeps it alive."""
        self._connections[writer] = asyncio.current_task()
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        try:
            while True:
                request = await _next_event(conn, reader, IDLE_SECONDS)
                if not isinstance(request, h11.Request):
                    return  # closed, or a protocol state this server never expects
                await _send(conn, writer, *await self._request(conn, reader, writer, request))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # the client asked to close, or a body was left unread
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(h11.LocalProtocolError, OSError):
                    await _send(conn, writer, exc.error_status_hint, {"message": f"bad request: {exc}"})
        except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or stalled: nothing to answer
        except asyncio.CancelledError:
            # Only the server's stop cancels a handler (asyncio.run, at its end). Ended cancelled, the task
            # would make asyncio's stream callback log a traceback for each connection open at a stop.
            pass
        finally:
            self._connections.pop(writer, None)
            writer.close()

    async def _request(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
    ) -> tuple[int, Json]:
        """Read one request's body and answer it: (HTTP status, JSON answer)."""
        route = request.target.decode("ascii", "replace").split("?", 1)[0].lstrip("/")
        if request.method != b"POST":
            return 405, {"message": "admission reviews are POSTed"}
        if route not in ROUTES:
            return 404, {"message": f"no admission webhook at /{route}"}
        if conn.they_are_waiting_for_100_continue:
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        started = time.perf_counter()
        body = bytearray()
        while True:
            event = await _next_event(conn, reader, READ_SECONDS)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY_BYTES:
                    return 413, {"message": f"an admission review over {MAX_BODY_BYTES} bytes"}
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise ConnectionError("the client closed the connection inside a request")
        try:
            return 200, await answer(self._ctx, route, bytes(body))
        except ValueError as exc:
            return 400, {"message": str(exc)}
        except Exception as exc:  # never a traceback to the API server: a refusal that says what failed
            log.exception("admission review failed on /%s", route)
            return 200, _internal_error(bytes(body), exc)
        finally:
            self._on_review(route, time.perf_counter() - started)


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, answer: Json) -> None:
    payload = json.dumps(answer, separators=(",", ":")).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(payload)))]
    for event in (
        h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase),
        h11.Data(data=payload),
        h11.EndOfMessage(),
    ):
        writer.write(conn.send(event) or b"")
    await writer.drain()


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader, patience: float) -> Any:
    """h11's next event, reading as it needs (each read given `patience` seconds); ConnectionClosed at the
    end of the stream."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        async with asyncio.timeout(patience):
            conn.receive_data(await reader.read(READ_CHUNK))


def _internal_error(body: bytes, exc: Exception) -> dict[str, Any]:
    uid = (json.loads(body).get("request") or {}).get("uid", "")
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": uid,
            "allowed": False,
            "status": {"code": 500, "message": f"dra-operator's webhook failed: {exc}"},
        },
    }
