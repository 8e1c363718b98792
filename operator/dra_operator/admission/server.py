"""The admission HTTPS server: a thread and event loop of its own, in the admission process
(dra_operator.operator.webhookprocess), whose main thread reads what the operator sends; a Pod create waits
for our answer, so nothing else runs there.

Certificates are read from files (generated in memory, or mounted from a Secret such as cert-manager's); a
rotated pair is picked up at the next TLS handshake after the files change, without closing the listener.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from dra_operator.admission.webhook import ROUTES, AdmissionContext, answer

log = logging.getLogger(__name__)

#: How often a handshake may look whether the certificate files changed.
RELOAD_CHECK_SECONDS = 10.0


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
        app = web.Application()
        app.router.add_post("/{route}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(
                runner, self._host, self.port, ssl_context=self._tls.context, reuse_address=True
            )
            await site.start()
            self.port = int(runner.addresses[0][1])
            self._listening.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        route = request.match_info["route"]
        if route not in ROUTES:
            return web.json_response({"message": f"no admission webhook at /{route}"}, status=404)
        started = time.perf_counter()
        body = await request.read()
        try:
            review = await answer(self._ctx, route, body)
        except ValueError as exc:
            return web.json_response({"message": str(exc)}, status=400)
        except Exception as exc:  # never a traceback to the API server: a refusal that says what failed
            log.exception("admission review failed on /%s", route)
            review = _internal_error(body, exc)
        finally:
            self._on_review(route, time.perf_counter() - started)
        return web.json_response(review)


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
