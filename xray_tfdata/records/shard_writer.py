"""Crash-safe writing: TFRecord shards (temporary name, fsync, rename) and the converter's spill.

A shard therefore either exists complete under its final name or not at all; a crash leaves at
most a `.{name}.tmp-{pid}` file, which the converter deletes on the next run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
import struct
from pathlib import Path
from typing import Any, Iterable, Sequence

import tensorflow as tf

from xray_tfdata import files
from xray_tfdata.records import manifest

COMPRESSIONS: tuple[str, ...] = ("", "GZIP")
TMP_MARKER = ".tmp-"
WORK_DIR = ".build"  # the converter's resume state inside output_dir; removed when complete
SHARD_RE = re.compile(r"^(train|val|test)-\d{5}-of-\d{5}\.tfrecord$")


class OutputDirError(RuntimeError):
    """output_dir holds something this run must not touch or continue."""


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
    path = Path(path)
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


# ---------------------------------------------------------------------------------------------
# The converter's spill: an append-only log of per-source results that survives kill -9.


@dataclasses.dataclass(frozen=True)
class SpillEntry:
    """Where one source's result sits in the spill, plus the small facts planning needs."""

    offset: int
    length: int
    key: str
    signature: tuple[int, int]
    augmentations: tuple[str, ...]  # () for a rejected source
    sizes: tuple[int, ...]  # encoded bytes per augmentation
    info: Any  # image_io.SourceInfo | None
    phash: int
    reason: str


class Spill:
    """Frames of `8-byte little-endian length + pickle` appended to one file.

    Opening an existing spill indexes its complete frames and cuts off a torn last frame (a kill
    mid-append), so a resumed run reuses everything that was fully written. Later frames for the
    same key win. The file is private to one output dir and written only by this process, so
    unpickling it is safe.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.index: dict[str, SpillEntry] = {}
        self.path.touch()
        with open(self.path, "rb") as f:
            good = 0
            while True:
                header = f.read(8)
                if len(header) < 8:
                    break
                (length,) = struct.unpack("<Q", header)
                payload = f.read(length)
                if len(payload) < length:
                    break
                try:
                    item = pickle.loads(payload)
                except Exception:  # noqa: BLE001 - any torn/garbled frame ends the usable log
                    break
                self.index[item.key] = self._entry(item, good + 8, length)
                good += 8 + length
        if good != self.path.stat().st_size:
            os.truncate(self.path, good)
        self._file = open(self.path, "ab")
        self._reader = open(self.path, "rb")

    @staticmethod
    def _entry(item: Any, offset: int, length: int) -> SpillEntry:
        return SpillEntry(offset, length, item.key, tuple(item.signature),
                          tuple(name for name, _ in item.outputs),
                          tuple(len(data) for _, data in item.outputs),
                          item.info, item.phash, item.reason)

    def append(self, item: Any) -> SpillEntry:
        payload = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        offset = self._file.tell() + 8
        self._file.write(struct.pack("<Q", len(payload)) + payload)
        # Flushed to the OS per frame: a killed process loses nothing already appended.
        self._file.flush()
        entry = self._entry(item, offset, len(payload))
        self.index[item.key] = entry
        return entry

    def outputs(self, entry: SpillEntry) -> dict[str, bytes]:
        self._file.flush()
        self._reader.seek(entry.offset)
        return dict(pickle.loads(self._reader.read(entry.length)).outputs)

    def close(self) -> None:
        self._file.close()
        self._reader.close()


# ---------------------------------------------------------------------------------------------
# Output directory ownership: refuse foreign or differently-built contents, resume our own.


def diff_args(previous: dict[str, Any], current: dict[str, Any],
              ignore: Sequence[str] = ()) -> list[str]:
    """Human-readable differences, e.g. "--image_size: 224 there, 128 now"."""
    keys = sorted((set(previous) | set(current)) - set(ignore))
    return [f"--{k}: {previous.get(k)!r} there, {current.get(k)!r} now"
            for k in keys if previous.get(k) != current.get(k)]


def _previous_args(out: Path) -> dict[str, Any] | None:
    for path in (out / WORK_DIR / "state.json", manifest.manifest_path(out)):
        if path.is_file():
            try:
                return json.loads(path.read_text())["args"]
            except (json.JSONDecodeError, KeyError):
                continue
    return None


def remove_outputs(out: Path) -> None:
    """--overwrite: deletes only what the converter writes (never a user's other files)."""
    for p in out.iterdir():
        if p.name == WORK_DIR and p.is_dir():
            shutil.rmtree(p)
        elif (SHARD_RE.match(p.name) or is_tmp_name(p.name)
              or p.name in (manifest.MANIFEST_NAME, manifest.MANIFEST_NAME + ".tmp")):
            p.unlink()


def prepare_output_dir(out: Path, args: dict[str, Any], *, overwrite: bool,
                       ignore: Sequence[str] = ()) -> None:
    """Creates out, or checks it is empty or ours with the same args; records args for resume.

    Raises:
      OutputDirError: out holds other files, or records built with different arguments (the
        message lists each differing argument).
    """
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output_dir={str(out)!r} exists and is not a directory.")
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        remove_outputs(out)
    entries = sorted(p.name for p in out.iterdir())
    previous = _previous_args(out)
    if entries and previous is None and not overwrite:
        more = "..." if len(entries) > 5 else ""
        raise OutputDirError(
            f"output_dir={str(out)!r} is not empty ({entries[:5]}{more}) and holds no "
            f"converter state ({manifest.MANIFEST_NAME} or {WORK_DIR}/state.json). Choose an "
            "empty or new --output_dir, or pass --overwrite (it deletes only *.tfrecord shards, "
            f"{manifest.MANIFEST_NAME} and {WORK_DIR}/)."
        )
    diffs = diff_args(previous, args, ignore) if previous is not None else []
    if diffs:
        raise OutputDirError(
            f"output_dir={str(out)!r} holds records built with different arguments: "
            f"{'; '.join(diffs)}. Rerun with the same arguments to resume or keep them, choose "
            "another --output_dir, or pass --overwrite to rebuild."
        )
    (out / WORK_DIR).mkdir(exist_ok=True)
    (out / WORK_DIR / "state.json").write_text(json.dumps({"args": args}, sort_keys=True))
    for p in out.iterdir():  # partial shards of a killed run: never trusted
        if is_tmp_name(p.name):
            p.unlink()


def complete_manifest(out: Path, args: dict[str, Any],
                      ignore: Sequence[str] = ()) -> dict[str, Any] | None:
    """The existing manifest if built with `args` and every shard it lists is intact, else None."""
    try:
        previous = manifest.read_manifest(out)
    except manifest.ManifestError:
        return None
    if (out / WORK_DIR).exists() or diff_args(previous.get("args", {}), args, ignore):
        return None
    for split in previous.get("splits", {}).values():
        for shard in split["shards"]:
            path = out / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["bytes"]:
                return None
            if files.sha256_file(path) != shard["sha256"]:
                return None
    return previous


def remove_stale_shards(out: Path, planned: set[str]) -> None:
    """Deletes shard files of another plan (e.g. another shard count) so none linger beside ours."""
    for p in out.iterdir():
        if SHARD_RE.match(p.name) and p.name not in planned:
            p.unlink()
