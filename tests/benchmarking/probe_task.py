"""A child-process task with a known memory footprint, for the isolation protocol's tests
(isolate.Task names it as "tests.benchmarking.probe_task:memory_probe")."""

from __future__ import annotations

from typing import Any


def memory_probe(megabytes: int) -> dict[str, Any]:
    """Touches `megabytes` MB and frees it: a known peak, to check the memory measurement."""
    if isinstance(megabytes, bool) or not isinstance(megabytes, int) or megabytes < 0:
        raise ValueError(f"megabytes must be an int >= 0. Received: megabytes={megabytes!r}.")
    block = bytearray(megabytes * 1024 * 1024)
    block[::4096] = b"\x01" * len(block[::4096])  # touch every page so it is resident
    del block
    return {"megabytes": megabytes}
