"""asyncio's TLS read buffer at dra_operator.tlsbuffers' size: connections use it, large bodies pass."""

from __future__ import annotations

import asyncio
import ssl
from asyncio import sslproto
from collections.abc import Iterator
from pathlib import Path

import pytest

from dra_operator.admission import tls
from dra_operator.tlsbuffers import READ_BUFFER, size_read_buffers

BODY = bytes(range(256)) * 8192  # 2 MiB, many times the buffer


def read_buffer(writer: asyncio.StreamWriter) -> int:
    """The size of the read buffer behind a TLS stream (asyncio's own attributes: nothing public says it)."""
    protocol = writer.transport._ssl_protocol  # type: ignore[attr-defined]
    return len(protocol._ssl_buffer)


@pytest.fixture
def default_size() -> Iterator[None]:
    before = sslproto.SSLProtocol.max_size
    yield
    sslproto.SSLProtocol.max_size = before


def test_connections_made_after_sizing_read_through_the_smaller_buffer(
    tmp_path: Path, default_size: None
) -> None:
    files = tls.generate(tmp_path, ["127.0.0.1"])
    assert sslproto.SSLProtocol.max_size == 256 * 1024  # asyncio's default, which this module changes
    size_read_buffers()

    async def exchange() -> tuple[bytes, bytes, list[int]]:
        server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_side.load_cert_chain(files.cert, files.key)
        buffers: list[int] = []

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            buffers.append(read_buffer(writer))
            got = await reader.readexactly(len(BODY))
            writer.write(got[::-1])
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_side)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ssl.create_default_context(cafile=str(files.ca))
        )
        buffers.append(read_buffer(writer))
        writer.write(BODY)
        await writer.drain()
        answer = await reader.readexactly(len(BODY))
        writer.close()
        server.close()
        await server.wait_closed()
        return BODY[::-1], answer, buffers

    expected, answer, buffers = asyncio.run(exchange())
    assert answer == expected
    assert buffers == [READ_BUFFER, READ_BUFFER]
