"""heap.release_free_memory: freed heap pages go back to the kernel (glibc)."""

from __future__ import annotations

from pathlib import Path

from dra_operator.operator import heap


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_freed_heap_pages_are_returned() -> None:
    # 64 MiB in 2 KiB blocks (glibc's heap, not Python's small-object arenas), then all freed but the last,
    # which pins the top of the heap: free() alone keeps the pages, as after the caches' initial lists.
    blocks = [bytearray(2048) for _ in range(32 * 1024)]
    for block in blocks:
        block[::512] = b"x" * 4  # touch every page
    last = blocks[-1]
    del blocks
    before = _rss_mib()
    assert heap.release_free_memory()
    released = before - _rss_mib()
    assert released > 32, f"only {released:.1f} MiB of 64 freed MiB returned"
    assert last[0] == ord("x")
