"""asyncio's TLS read buffer, sized for a process that holds dozens of connections.

asyncio gives each TLS connection a read buffer of `SSLProtocol.max_size`, 256 KiB, zero-filled when the
connection is made, so all of it is resident for the connection's life. The operator holds about 30
connections to the API server during a burst (its watches, workers and event writes) and its admission
process about 10 from it: 10 MiB of buffers at 256 KiB each (issue 14). A TLS record carries at most
16 KiB, so reads of 32 KiB still take two records at a time. Measured: with 30 connections held open, the
buffers' resident memory falls by 192 KiB each at 64 KiB; 100 MiB read through one connection took the same
CPU at 64 and 32 KiB (0.24-0.26 s, both ends in one process), and 10 % more at 16 KiB.
"""

from __future__ import annotations

from asyncio import sslproto

READ_BUFFER = 32 * 1024


def size_read_buffers(size: int = READ_BUFFER) -> None:
    """Give TLS connections made from now on read buffers of `size` bytes (asyncio's default: 256 KiB)."""
    sslproto.SSLProtocol.max_size = size
