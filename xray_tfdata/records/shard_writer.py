"""Crash-safe TFRecord shards: temporary name, fsync, rename.

A shard therefore either exists complete under its final name or not at all; a crash leaves at
most a `.{name}.tmp-{pid}` file, which the converter deletes on the next run
(`conversion_state.prepare_output_dir`). The resume state lives in `conversion_state`.

A shard for a URL output dir is written and hashed locally exactly as above, then uploaded to a
temporary name there and renamed (files.py), so its bytes and sha256 are the local ones.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Iterable

import tensorflow as tf

from xray_tfdata import files, paths
from xray_tfdata.paths import RemotePath

COMPRESSIONS: tuple[str, ...] = ("", "GZIP")
TMP_MARKER = ".tmp-"
SHARD_RE = re.compile(r"^(train|val|test)-\d{5}-of-\d{5}\.tfrecord$")


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def is_tmp_name(name: str) -> bool:
    return name.startswith(".") and TMP_MARKER in name


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some platforms/file systems cannot open directories; the rename still happened
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_shard(
    path: str | os.PathLike,
    records: Iterable[bytes],
    compression: str = "",
) -> dict[str, int | str]:
    """Writes serialized records to `path` via a temporary file and an atomic rename.

    Returns the manifest entry {"file", "num_examples", "bytes", "sha256"}. GZIP output is
    byte-reproducible (zlib's gzip header carries no timestamp or name).
    """
    if compression not in COMPRESSIONS:
        raise ValueError(
            f"compression must be one of {COMPRESSIONS}. Received: compression={compression!r}."
        )
    path = paths.location(path)
    if isinstance(path, RemotePath):
        with tempfile.TemporaryDirectory(prefix="xray_tfdata-shard-") as tmp:
            entry = write_shard(Path(tmp) / path.name, records, compression)
            with files.atomic_path(path) as local:
                os.replace(Path(tmp) / path.name, local)
        return entry
    tmp = path.with_name(f".{path.name}{TMP_MARKER}{os.getpid()}")
    count = 0
    try:
        options = tf.io.TFRecordOptions(compression_type=compression or None)
        with tf.io.TFRecordWriter(str(tmp), options=options) as writer:
            for record in records:
                writer.write(record)
                count += 1
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        sha256 = files.sha256_file(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return {"file": path.name, "num_examples": count, "bytes": size, "sha256": sha256}
