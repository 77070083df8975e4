"""The converter's state in its output dir: the resume spill, ownership checks, stale outputs.

`<output_dir>/.build/` holds what a killed run leaves for the next one: `state.json` (the
arguments, so a rerun with other arguments is refused rather than mixed in), `pass1.spill` (every
processed source) and `shards.json` (the shard journal). It is deleted once the manifest is
written. The converter only ever deletes what it writes itself, never a user's other files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import struct
from pathlib import Path
from typing import Any, Sequence

from xray_tfdata import files
from xray_tfdata.records import manifest
from xray_tfdata.records.shard_writer import SHARD_RE, is_tmp_name

WORK_DIR = ".build"  # the converter's resume state inside output_dir; removed when complete
STATE_NAME = "state.json"


class OutputDirError(RuntimeError):
    """output_dir holds something this run must not touch or continue."""


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
        # No flush needed: append() flushes every frame, and it is the only writer.
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
    for path in (out / WORK_DIR / STATE_NAME, manifest.manifest_path(out)):
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
    # Atomic: a kill while writing must not leave a torn state.json that hides our ownership.
    files.write_json(out / WORK_DIR / STATE_NAME, {"args": args})
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
    if not all(shard_intact(out, shard) for split in previous.get("splits", {}).values()
               for shard in split["shards"]):
        return None
    return previous


def shard_intact(out: Path, entry: dict[str, Any]) -> bool:
    """Whether the shard a manifest entry describes is on disk with its recorded size and sha256."""
    path = out / entry["file"]
    return (path.is_file() and path.stat().st_size == entry["bytes"]
            and files.sha256_file(path) == entry["sha256"])


def remove_stale_shards(out: Path, planned: set[str]) -> None:
    """Deletes shard files of another plan (e.g. another shard count) so none linger beside ours."""
    for p in out.iterdir():
        if SHARD_RE.match(p.name) and p.name not in planned:
            p.unlink()


class ShardJournal:
    """`.build/shards.json`: each written shard's manifest entry and a fingerprint of its content.

    A resumed run keeps a shard only if it is intact (size and sha256 as recorded) and its
    planned content (the fingerprint) is still what the plan wants.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out / WORK_DIR / "shards.json"
        self.entries: dict[str, Any] = (json.loads(self.path.read_text())
                                        if self.path.is_file() else {})

    def intact(self, name: str, fingerprint: str) -> dict[str, Any] | None:
        """The recorded entry of shard `name` if it is still on disk unchanged, else None."""
        known = self.entries.get(name)
        if known and known["fingerprint"] == fingerprint and shard_intact(self.out, known["entry"]):
            return known["entry"]
        return None

    def record(self, name: str, fingerprint: str, entry: dict[str, Any]) -> None:
        self.entries[name] = {"fingerprint": fingerprint, "entry": entry}
        files.write_atomic(self.path, json.dumps(self.entries, sort_keys=True))
