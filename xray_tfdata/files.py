"""Durable file output shared by every stage that writes results.

Nothing a run writes may be seen half-written after a crash: every writer goes through
`write_atomic` (temporary sibling, then an atomic rename). `sha256_file` is the one way shards,
models and exports are fingerprinted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Writes `data` to a temporary sibling, then renames it over `path`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)
    return path


def write_json(path: str | os.PathLike, data: Any, **dumps_kwargs: Any) -> Path:
    """Atomic JSON: indented, sorted keys, trailing newline (reruns give identical bytes)."""
    dumps_kwargs.setdefault("indent", 2)
    dumps_kwargs.setdefault("sort_keys", True)
    return write_atomic(path, json.dumps(data, **dumps_kwargs) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (shards and models can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
