"""Durable output shared by every stage that writes results.

Nothing a run writes may be seen half-written after a crash. Every writer goes through this
module:
- `write_atomic` / `write_json` for files: a temporary sibling, then an atomic rename;
- `atomic_path` for files written by another library (`model.save`, `joblib.dump`): it yields a
  temporary sibling path to write to and renames it into place only when the block succeeds;
- `atomic_dir` for directories (the SavedModel export): the same, for a whole folder.
`sha256_file` is the one way shards, models and exports are fingerprinted; `versions` and
`usable_cpus` are the facts every result records about where it was made.

Each takes a local path or a URL (paths.py). On a URL the temporary sibling is a URL too and the
rename is the scheme's own (gfile rename: atomic on ram://, a server-side copy + delete on gs://,
where a reader sees either no object or the whole one); libraries that write only local files
(`model.save`, `joblib.dump`) write to a local temporary that is uploaded on success.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

from xray_tfdata import paths
from xray_tfdata.paths import RemotePath

# The distributions a result's numbers depend on; read from installed metadata, so asking costs
# no TensorFlow import (3 s).
VERSIONED = ("xray_tfdata", "tensorflow", "keras", "numpy", "scikit-learn",
             "opencv-python-headless", "absl-py", "psutil", "matplotlib")


Location = Union[Path, RemotePath]


def _tmp_sibling(path: Location) -> Location:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_atomic(path: paths.PathLike, data: bytes | str) -> Location:
    """Writes `data` to a temporary sibling, then renames it over `path`; returns the path."""
    path = paths.location(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        paths.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, recursively: strict JSON has no NaN (e.g. the AUC of a split missing a
    class), and a reader must not have to guess what a bare NaN token means."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: paths.PathLike, data: Any, *, nan_to_null: bool = False,
               **dumps_kwargs: Any) -> Location:
    """Atomic JSON: indented, sorted keys, trailing newline (reruns give identical bytes).

    With `nan_to_null`, NaN/inf become null and anything else non-JSON becomes its str().
    """
    dumps_kwargs.setdefault("indent", 2)
    dumps_kwargs.setdefault("sort_keys", True)
    if nan_to_null:
        data = json_safe(data)
        dumps_kwargs.setdefault("default", str)
        dumps_kwargs.setdefault("allow_nan", False)
    return write_atomic(path, json.dumps(data, **dumps_kwargs) + "\n")


@contextlib.contextmanager
def atomic_path(path: paths.PathLike) -> Iterator[Path]:
    """Yields a temporary sibling of `path` (same suffix, so `model.save` accepts it) that is
    renamed over `path` when the block completes, and removed if it raises.

    For a URL the yielded path is a local temporary file (or directory), uploaded to a temporary
    sibling URL and renamed over `path` when the block completes.
    """
    path = paths.location(path)
    if isinstance(path, RemotePath):
        with tempfile.TemporaryDirectory(prefix="xray_tfdata-") as tmp:
            local = Path(tmp) / path.name
            yield local
            _upload_over(local, path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def _upload_over(local: Path, path: RemotePath) -> None:
    """Uploads a local file or tree to a temporary sibling of `path`, then renames it over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        paths.upload(local, tmp)
        if local.is_dir() and path.exists():
            paths.rmtree(path)  # a rename does not merge directories
        paths.replace(tmp, path)
    except BaseException:
        paths.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: paths.PathLike) -> Iterator[Path]:
    """Yields a fresh temporary directory beside `path`; when the block completes it replaces
    `path` (an older directory there is removed first), and on error it is deleted.

    For a URL the directory is a local temporary, uploaded beside `path` and renamed over it
    (on object stores a directory rename is per object: readers should wait for the command).
    """
    path = paths.location(path)
    if isinstance(path, RemotePath):
        with tempfile.TemporaryDirectory(prefix="xray_tfdata-") as tmp:
            yield Path(tmp)
            _upload_over(Path(tmp), path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# What to do when an output cannot be written, by errno; anything else gets the generic fix.
_WRITE_FIXES = {
    errno.ENOSPC: "Free space on that disk or write to another",
    errno.EDQUOT: "Free space within your quota or write to another disk",
    errno.EROFS: "That file system is read-only: write to a writable one",
    errno.EACCES: "Write to a directory you may write to",
    errno.EPERM: "Write to a directory you may write to",
    errno.ENOTDIR: "A parent of that path is a file, not a directory: write elsewhere",
    errno.EEXIST: "A parent of that path is a file, not a directory: write elsewhere",
}


def write_error_message(err: OSError, what: str, fix: str) -> str:
    """One line for an output that could not be written: the path, the system's reason and
    the fix (`what` names the output, `fix` says how to point it elsewhere, e.g. the flag)."""
    path = err.filename or "the output"
    reason = err.strerror or str(err)
    advice = _WRITE_FIXES.get(err.errno, "Check that path and write elsewhere if need be")
    return f"Cannot write {what} {str(path)!r}: {reason}. {advice} ({fix})."


def sha256_file(path: paths.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (shards and models can be large)."""
    digest = hashlib.sha256()
    path = paths.location(path)
    with (path.open("rb") if isinstance(path, RemotePath) else open(path, "rb")) as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def versions(names: Sequence[str] = VERSIONED) -> dict[str, str]:
    """Python and the installed versions of `names` ("not installed" when absent)."""
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset
    narrow), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
