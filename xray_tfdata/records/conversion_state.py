"""The converter's state in its output dir: the build lock, the resume spill, ownership checks,
stale outputs.

`<output_dir>/.build/` holds `lock` (flocked by the running build: one build per dir), and what a
killed run leaves for the next one: `state.json` (the arguments, so a rerun with other arguments
is refused rather than mixed in), `pass1.spill` (every processed source, data only) and
`shards.json` (the shard journal); `rejected.json` after a build refused for too many rejects. It
is deleted once the manifest is written. The converter only ever deletes what it writes itself,
never a user's other files. Nothing here is ever unpickled: all of it is JSON or raw bytes.

An output dir may be a URL (paths.py: gs://, ram://, ...). Then `state.json`, `shards.json` and
the shards live there as usual, but there is no lock (object stores have no flock: one build per
output dir is the user's job), and the spill, which needs appends and random reads that object
stores lack, is local scratch (`local_work_dir`): a resume on the same machine reuses it, one on
another machine decodes the sources again but keeps every shard already uploaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import socket
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

from absl import logging

from xray_tfdata import files, paths
from xray_tfdata.paths import RemotePath
from xray_tfdata.records import image_io, manifest
from xray_tfdata.records.shard_writer import SHARD_RE, is_tmp_name

WORK_DIR = ".build"  # the converter's resume state inside output_dir; removed when complete
STATE_NAME = "state.json"
SPILL_NAME = "pass1.spill"
OutputDir = Union[Path, RemotePath]


class OutputDirError(RuntimeError):
    """output_dir holds something this run must not touch or continue."""


# ---------------------------------------------------------------------------------------------
# One build per output dir at a time.

LOCK_NAME = "lock"


def _holder(fd: int) -> str:
    text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    return text or "a process that is just starting"


@contextlib.contextmanager
def build_lock(out: OutputDir) -> Iterator[None]:
    """Holds an exclusive flock on `<out>/.build/lock` for the whole build.

    Two builds into one output dir would interleave their spills and shards (one run's pixels
    under another's paths, with matching checksums), so the second is refused, naming the holder
    (pid, host, start time are written into the lock file). The OS drops the lock when its
    process exits or is killed (even kill -9), so a stale lock file never blocks a rerun. flock
    is per host on most network file systems: builds into one NFS dir from two machines are not
    excluded.

    A URL output dir is not locked (see the module docstring).

    Raises:
      OutputDirError: out is not a directory, or another build holds the lock.
    """
    if isinstance(out, RemotePath):
        yield from _unlocked(out)
        return
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output_dir={str(out)!r} exists and is not a directory; choose "
                             "a directory for --output_dir.")
    path, created = out / WORK_DIR / LOCK_NAME, not out.exists()
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise
            holder = _holder(fd)
            os.close(fd)
            raise OutputDirError(
                f"output_dir={str(out)!r} is being built by another build_records ({holder}). "
                "Wait for it to finish (then rerun: an identical build is kept), or choose "
                "another --output_dir.") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # a finishing build removed .build/ as we locked its file: lock the new one
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n"
              .encode("utf-8"), 0)
    try:
        yield
    finally:
        if path.exists() and not work_files(out):
            shutil.rmtree(out / WORK_DIR, ignore_errors=True)  # nothing to resume: no litter
            if created and not any(out.iterdir()):
                out.rmdir()  # a build that failed before writing leaves no empty output dir
        os.close(fd)


def _unlocked(out: RemotePath) -> Iterator[None]:
    """build_lock's body for a URL: no lock, the same cleanup of what is not worth resuming."""
    if out.is_file():
        raise OutputDirError(f"output_dir={str(out)!r} exists and is not a directory; choose "
                             "a directory for --output_dir.")
    created = not out.exists()
    try:
        yield
    finally:
        if not work_files(out):
            paths.rmtree(out / WORK_DIR, ignore_errors=True)
            shutil.rmtree(local_work_dir(out), ignore_errors=True)
            if created and out.is_dir() and not any(out.iterdir()):
                paths.rmtree(out, ignore_errors=True)


def local_work_dir(out: OutputDir) -> Path:
    """Where the spill lives: `.build/` itself for a local output dir; for a URL, local scratch
    named after the URL in the temp dir ($TMPDIR), so a rerun on this machine finds it."""
    if isinstance(out, Path):
        return out / WORK_DIR
    key = hashlib.sha256(str(out).encode("utf-8")).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "xray_tfdata-build" / key


def spill_path(out: OutputDir) -> Path:
    return local_work_dir(out) / SPILL_NAME


def discard_work(out: OutputDir) -> None:
    """Removes what a resume would use from .build/ (the lock file stays its holder's)."""
    work = out / WORK_DIR
    for name in work_files(out):
        paths.rmtree(work / name) if (work / name).is_dir() else (work / name).unlink()
    if isinstance(out, RemotePath):
        shutil.rmtree(local_work_dir(out), ignore_errors=True)


def rejected_path(out: OutputDir) -> Path:
    """Where a build refused for too many rejects lists them all (it writes no manifest)."""
    return out / WORK_DIR / "rejected.json"


def work_files(out: OutputDir) -> list[str]:
    """What a previous run left in .build/ to resume from (the lock file does not count)."""
    work = out / WORK_DIR
    return sorted(p.name for p in work.iterdir() if p.name != LOCK_NAME) if work.is_dir() else []


# ---------------------------------------------------------------------------------------------
# The converter's spill: an append-only log of per-source results that survives kill -9.

# Data only, never pickle: a pickle runs code when loaded, and .build/ sits in an output dir that
# other people and tools may write to. A frame is `<Q header length><Q body length>`, a JSON
# header (key, signature, SourceInfo, hash, reason, output names and sizes), then the encoded
# outputs back to back.
SPILL_MAGIC = b"xray_tfdata spill 2\n"
_FRAME = struct.Struct("<QQ")


@dataclasses.dataclass(frozen=True, slots=True)  # one per source: no per-object __dict__
class SpillEntry:
    """Where one source's result sits in the spill, plus the small facts planning needs."""

    offset: int  # of the frame's body (its encoded outputs)
    length: int
    key: str
    signature: tuple[int, int]
    augmentations: tuple[str, ...]  # () for a rejected source
    sizes: tuple[int, ...]  # encoded bytes per augmentation
    info: Any  # image_io.SourceInfo | None
    phash: int
    reason: str


def _header(item: Any) -> bytes:
    info = None if item.info is None else dataclasses.asdict(item.info)
    return json.dumps({"key": item.key, "signature": list(item.signature), "info": info,
                       "phash": item.phash, "reason": item.reason,
                       "outputs": [[name, len(data)] for name, data in item.outputs]},
                      sort_keys=True).encode("utf-8")


def _entry(header: bytes, offset: int, length: int, key: str | None = None) -> SpillEntry:
    """Raises ValueError/TypeError/KeyError on anything but a header _header wrote.

    The index holds one entry per source for the whole build (400k at MIMIC's scale), so the
    strings that repeat across sources (augmentation names, formats, modes, reasons) are
    interned, and an appended entry keeps the caller's `key` string instead of a decoded copy.
    """
    h = json.loads(header.decode("utf-8"))
    names = tuple(sys.intern(str(name)) for name, _ in h["outputs"])
    sizes = tuple(int(size) for _, size in h["outputs"])
    if sum(sizes) != length or not isinstance(h["key"], str) or (key and key != h["key"]):
        raise ValueError("frame sizes disagree")
    info = h["info"]
    if info is not None:
        info = image_io.SourceInfo(**{**info, "mode": sys.intern(info["mode"]),
                                      "format": sys.intern(info["format"]),
                                      "tags": tuple(tuple(t) for t in info["tags"])})
    return SpillEntry(offset, length, key or h["key"], tuple(int(v) for v in h["signature"]),
                      names, sizes, info, int(h["phash"]), sys.intern(str(h["reason"])))


class Spill:
    """Frames (see SPILL_MAGIC) appended to one file by the one process holding the build lock.

    Opening an existing spill indexes its complete frames and cuts off a torn last frame (a kill
    mid-append), so a resumed run reuses everything that was fully written. Later frames for the
    same key win. A file that does not start with SPILL_MAGIC (an older converter's pickles, or
    something planted) is never parsed: it is discarded with a warning and the sources are
    decoded again. Offsets are counted by this object, never read from an append handle's tell().
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.index: dict[str, SpillEntry] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)  # local scratch of a URL output dir
        self.path.touch()
        self._file = open(self.path, "r+b")
        self._end = self._scan()
        self._file.truncate(self._end)
        self._reader = open(self.path, "rb")

    def _scan(self) -> int:
        """Indexes the complete frames; returns where the next frame goes."""
        f = self._file
        magic = f.read(len(SPILL_MAGIC))
        if magic != SPILL_MAGIC:
            if magic:
                logging.warning("Ignoring %s: not a spill this converter wrote (an older format "
                                "or a foreign file); its sources are decoded again.", self.path)
            f.seek(0)
            f.truncate(0)
            f.write(SPILL_MAGIC)
            return len(SPILL_MAGIC)
        good = len(SPILL_MAGIC)
        while True:
            lengths = f.read(_FRAME.size)
            if len(lengths) < _FRAME.size:
                return good
            head_len, body_len = _FRAME.unpack(lengths)
            header = f.read(min(head_len, 1 << 24))
            if len(header) < head_len:
                return good
            body_offset = good + _FRAME.size + head_len
            try:
                entry = _entry(header, body_offset, body_len)
            except (ValueError, TypeError, KeyError):  # a garbled frame ends the usable log
                return good
            if f.seek(body_len, os.SEEK_CUR) > os.fstat(f.fileno()).st_size:
                return good  # torn body
            self.index[entry.key] = entry
            good = body_offset + body_len

    def append(self, item: Any) -> SpillEntry:
        header = _header(item)
        body = b"".join(data for _, data in item.outputs)
        self._file.seek(self._end)
        self._file.write(_FRAME.pack(len(header), len(body)) + header + body)
        # Flushed to the OS per frame: a killed process loses nothing already appended.
        self._file.flush()
        entry = _entry(header, self._end + _FRAME.size + len(header), len(body), item.key)
        self._end = entry.offset + entry.length
        self.index[entry.key] = entry
        return entry

    def outputs(self, entry: SpillEntry) -> dict[str, bytes]:
        # No flush needed: append() flushes every frame, and it is the only writer.
        self._reader.seek(entry.offset)
        body = self._reader.read(entry.length)
        ends = list(itertools.accumulate(entry.sizes))
        return {name: body[end - size:end]
                for name, size, end in zip(entry.augmentations, entry.sizes, ends)}

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


def _previous_args(out: OutputDir) -> dict[str, Any] | None:
    for path in (out / WORK_DIR / STATE_NAME, manifest.manifest_path(out)):
        if path.is_file():
            try:
                return json.loads(path.read_text())["args"]
            except (json.JSONDecodeError, KeyError):
                continue
    return None


def remove_outputs(out: OutputDir) -> None:
    """--overwrite: deletes only what the converter writes (never a user's other files)."""
    for p in out.iterdir():
        if p.name == WORK_DIR and p.is_dir():
            discard_work(out)  # not the lock: it is this build's, and must stay its inode
        elif (SHARD_RE.match(p.name) or is_tmp_name(p.name)
              or p.name in (manifest.MANIFEST_NAME, manifest.MANIFEST_NAME + ".tmp")):
            p.unlink()


def prepare_output_dir(out: OutputDir, args: dict[str, Any], *, overwrite: bool,
                       ignore: Sequence[str] = ()) -> None:
    """Creates out, or checks it is empty or ours with the same args; records args for resume.

    Raises:
      OutputDirError: out holds other files, or records built with different arguments (the
        message lists each differing argument).
    """
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        remove_outputs(out)
    entries = sorted(p.name for p in out.iterdir()
                     if p.name != WORK_DIR or work_files(out))  # our lock alone is not content
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


def complete_manifest(out: OutputDir, args: dict[str, Any],
                      ignore: Sequence[str] = ()) -> dict[str, Any] | None:
    """The existing manifest if built with `args` and every shard it lists is intact, else None."""
    try:
        previous = manifest.read_manifest(out)
    except manifest.ManifestError:
        return None
    if work_files(out) or diff_args(previous.get("args", {}), args, ignore):
        return None
    try:
        shards = [dataclasses.asdict(shard) for split in manifest.info_from_dict(previous, out)
                  .splits.values() for shard in split.shards]
    except (manifest.ManifestError, KeyError, TypeError, ValueError):
        return None  # a manifest of another shape is not a complete build of these arguments
    if not all(shard_intact(out, shard) for shard in shards):
        return None
    return previous


def shard_intact(out: OutputDir, entry: dict[str, Any]) -> bool:
    """Whether the shard a manifest entry describes is on disk with its recorded size and sha256."""
    path = out / entry["file"]
    return (path.is_file() and path.stat().st_size == entry["bytes"]
            and files.sha256_file(path) == entry["sha256"])


def remove_stale_shards(out: OutputDir, planned: set[str]) -> None:
    """Deletes shard files of another plan (e.g. another shard count) so none linger beside ours."""
    for p in out.iterdir():
        if SHARD_RE.match(p.name) and p.name not in planned:
            p.unlink()


class ShardJournal:
    """`.build/shards.json`: each written shard's manifest entry and a fingerprint of its content.

    A resumed run keeps a shard only if it is intact (size and sha256 as recorded) and its
    planned content (the fingerprint) is still what the plan wants.
    """

    def __init__(self, out: OutputDir) -> None:
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
