"""One path layer: local paths stay `pathlib.Path`, URLs (`scheme://...`) go through tf.io.gfile.

Every path flag (`--data_dir`, `--labels_csv`, `--output_dir`, `--records_dir`, `--model_dir`,
`--model_path`, `--work_dir`) goes through `location()`:
- a local path (or `file://...`) becomes a `pathlib.Path`, so local behaviour, speed and bytes are
  exactly what they were;
- a URL whose scheme TensorFlow knows (`gs://`, `ram://`, `s3://` with tensorflow-io, ...)
  becomes a `RemotePath`, which offers the small part of the `Path` API the stages use (`/`,
  `name`, `parent`, `exists`, `is_dir`, `iterdir`, `rglob`, `read_bytes`, `mkdir`, `unlink`,
  `stat`, ...) on top of tf.io.gfile.
`RemotePath` deliberately has no `__fspath__`: `open()`/`os.replace()` on a URL is the bug this
layer exists to prevent ("gs://bucket" silently becoming a local folder named `gs:`), so such a
call fails loudly instead. Libraries that take only local files get one through
`local_copy` (read) or `files.atomic_path` (write: a local temporary, uploaded on success).

TensorFlow is imported lazily, only when a URL is touched: the converter's worker processes and
every command's --help never pay its start-up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import os
import posixpath
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Union

from xray_tfdata.errors import ConfigError

URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
S3_HINT = "s3:// needs tensorflow-io (pip install tensorflow-io)"


class UnknownSchemeError(ValueError):
    """A URL whose scheme no TensorFlow file system handles; the message names the known ones."""


def scheme(path: Any) -> str:
    """The URL scheme of `path` ("" for a local path)."""
    match = URL_RE.match(str(path)) if isinstance(path, (str, RemotePath)) else None
    return match.group(1).lower() if match else ""


def is_url(path: Any) -> bool:
    """Whether `path` names a non-local location (`file://` counts as local)."""
    return scheme(path) not in ("", "file")


def known_schemes() -> list[str]:
    """The URL schemes this process's TensorFlow file systems handle (imports TensorFlow)."""
    return sorted(s for s in _gfile().get_registered_schemes() if s)


def _gfile() -> Any:
    import tensorflow as tf  # lazily: see the module docstring
    return tf.io.gfile


def unknown_scheme_message(path: Any) -> str:
    """The one line for a URL TensorFlow cannot open, or "" when its scheme is known."""
    name = scheme(path)
    known = known_schemes()
    if not name or name in known:
        return ""
    hint = f"; {S3_HINT}" if name == "s3" else ""
    return (f"unknown URL scheme {name}:// in {str(path)!r}: TensorFlow's file systems here "
            f"know {', '.join(s + '://' for s in known)}{hint}")


def check(field: str, value: Any) -> None:
    """Raises ConfigError when `value` is a URL whose scheme TensorFlow does not know.

    For settings dataclasses; a local path (the default) costs nothing and imports nothing.
    """
    if is_url(value) and (message := unknown_scheme_message(value)):
        raise ConfigError(field, str(value),
                          "a local path or a URL whose scheme TensorFlow knows ("
                          + ", ".join(s + "://" for s in known_schemes()) + ")",
                          f"{S3_HINT}." if scheme(value) == "s3" else "")


def location(path: Union[str, os.PathLike, "RemotePath"]) -> Union[Path, "RemotePath"]:
    """`Path` for a local path or `file://` URL, `RemotePath` for any other URL."""
    if isinstance(path, (Path, RemotePath)):
        return path
    text = os.fspath(path)
    if scheme(text) == "file":
        return Path(text[len("file://"):])
    return RemotePath(text) if URL_RE.match(text) else Path(text)


def join(base: Any, *parts: str) -> Union[Path, "RemotePath"]:
    """`location(base) / part / ...`."""
    result = location(base)
    for part in parts:
        result = result / part
    return result


@contextlib.contextmanager
def _os_errors(url: str) -> Iterator[None]:
    """gfile's tf.errors as the OSError subclasses pathlib raises, so callers that catch
    FileNotFoundError / OSError for a local path behave the same for a URL."""
    import tensorflow as tf
    try:
        yield
    except tf.errors.NotFoundError as err:
        raise FileNotFoundError(2, f"No such file or directory ({err.message})", url) from err
    except tf.errors.PermissionDeniedError as err:
        raise PermissionError(13, f"Permission denied ({err.message})", url) from err
    except tf.errors.OpError as err:
        raise OSError(5, err.message, url) from err


@dataclasses.dataclass(frozen=True)
class _Stat:
    st_size: int
    st_mtime_ns: int


class RemotePath:
    """A URL with the subset of `pathlib.Path` the stages use, on tf.io.gfile (see module doc)."""

    __slots__ = ("_url",)

    def __init__(self, url: str) -> None:
        if not URL_RE.match(url):
            raise ValueError(f"not a URL (scheme://...): {url!r}")
        head, rest = url.split("://", 1)
        rest = rest.rstrip("/")
        self._url = f"{head}://{rest}"

    # -- pure path arithmetic (no I/O) --
    def __str__(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"RemotePath({self._url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)

    def __lt__(self, other: "RemotePath") -> bool:
        return self._url < other._url

    def __truediv__(self, part: Union[str, os.PathLike]) -> "RemotePath":
        return RemotePath(f"{self._url}/{os.fspath(part).strip('/')}")

    def joinpath(self, *parts: str) -> "RemotePath":
        return join(self, *parts)  # type: ignore[return-value]

    @property
    def _body(self) -> str:
        return self._url.split("://", 1)[1]

    @property
    def name(self) -> str:
        body = self._body
        return posixpath.basename(body) if "/" in body else ""

    @property
    def parent(self) -> "RemotePath":
        head, body = self._url.split("://", 1)
        return RemotePath(f"{head}://{posixpath.dirname(body)}") if "/" in body else self

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    def with_name(self, name: str) -> "RemotePath":
        return self.parent / name

    def with_suffix(self, suffix: str) -> "RemotePath":
        return self.parent / (self.stem + suffix)

    def relative_to(self, other: "RemotePath") -> Path:
        prefix = str(other) + "/"
        if not self._url.startswith(prefix):
            raise ValueError(f"{self._url!r} is not under {str(other)!r}")
        return Path(self._url[len(prefix):])

    def as_posix(self) -> str:
        return self._url

    # -- I/O through tf.io.gfile --
    def _g(self) -> Any:
        if message := unknown_scheme_message(self):
            raise UnknownSchemeError(message)
        return _gfile()

    def exists(self) -> bool:
        return bool(self._g().exists(self._url))

    def is_dir(self) -> bool:
        return bool(self._g().isdir(self._url))

    def is_file(self) -> bool:
        g = self._g()
        return bool(g.exists(self._url) and not g.isdir(self._url))

    def iterdir(self) -> Iterator["RemotePath"]:
        # gfile lists sub-directories of object stores with a trailing "/": strip it.
        for name in sorted(self._g().listdir(self._url)):
            yield self / name.rstrip("/")

    def rglob(self, pattern: str) -> Iterator["RemotePath"]:
        """Every file and directory under this one whose name matches `pattern`, sorted."""
        found = []
        for root, dirs, names in self._g().walk(self._url):
            base = RemotePath(root)
            found += [base / n.rstrip("/") for n in list(dirs) + list(names)
                      if fnmatch.fnmatch(n.rstrip("/"), pattern)]
        yield from sorted(found, key=str)

    def files_under(self) -> set[str]:
        """Every file below this directory, as URLs, from one recursive listing."""
        return {f"{root.rstrip('/')}/{n}" for root, _, names in self._g().walk(self._url)
                for n in names}

    def glob(self, pattern: str) -> Iterator["RemotePath"]:
        yield from sorted((RemotePath(p) for p in self._g().glob(f"{self._url}/{pattern}")),
                          key=str)

    def stat(self) -> _Stat:
        g = self._g()
        with _os_errors(self._url):
            st = g.stat(self._url)
        return _Stat(int(st.length), int(st.mtime_nsec))

    def open(self, mode: str = "rb") -> BinaryIO:
        return self._g().GFile(self._url, mode)

    def read_bytes(self) -> bytes:
        g = self._g()
        with _os_errors(self._url), g.GFile(self._url, "rb") as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        """Not atomic (as Path.write_bytes): use files.write_atomic for results."""
        with self.open("wb") as f:
            f.write(data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def touch(self) -> None:
        if not self.exists():
            self.write_bytes(b"")

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        g = self._g()
        if g.isdir(self._url):
            if not exist_ok:
                raise FileExistsError(self._url)
            return
        (g.makedirs if parents else g.mkdir)(self._url)

    def unlink(self, missing_ok: bool = False) -> None:
        g = self._g()
        if missing_ok and not g.exists(self._url):
            return
        with _os_errors(self._url):
            g.remove(self._url)

    def resolve(self) -> "RemotePath":
        return self  # a URL is absolute already

    def is_absolute(self) -> bool:
        return True

    def rmdir(self) -> None:
        self._g().remove(self._url)


PathLike = Union[str, os.PathLike, RemotePath]


def rmtree(path: PathLike, ignore_errors: bool = False) -> None:
    """`shutil.rmtree` for either kind of path."""
    path = location(path)
    if isinstance(path, Path):
        shutil.rmtree(path, ignore_errors=ignore_errors)
        return
    try:
        path._g().rmtree(str(path))
    except Exception:  # noqa: BLE001 - mirrors shutil's ignore_errors
        if not ignore_errors:
            raise


def replace(src: PathLike, dst: PathLike) -> None:
    """`os.replace` for two paths of the same kind (a URL: the scheme's rename, overwriting)."""
    src, dst = location(src), location(dst)
    if isinstance(src, Path) and isinstance(dst, Path):
        os.replace(src, dst)
        return
    if isinstance(src, Path) or isinstance(dst, Path):
        raise ValueError(f"cannot rename between a local path and a URL: {src} -> {dst}")
    g = src._g()
    if not g.isdir(str(src)):
        g.rename(str(src), str(dst), overwrite=True)
        return
    # A directory is renamed file by file: ram:// renames only the directory entry (its files
    # stay under the old name) and object stores have no directories, only name prefixes.
    for root, _, names in g.walk(str(src)):
        target = dst / RemotePath(root).relative_to(src).as_posix() if root != str(src) else dst
        g.makedirs(str(target))
        for name in names:
            g.rename(f"{root}/{name}", str(target / name), overwrite=True)
    g.rmtree(str(src))


def upload(local: PathLike, dst: "RemotePath") -> None:
    """Copies a local file or directory tree to the URL `dst` (overwriting files there)."""
    local = Path(local)
    g = dst._g()
    if local.is_dir():
        g.makedirs(str(dst))
        for child in sorted(local.iterdir()):
            upload(child, dst / child.name)
    else:
        g.copy(str(local), str(dst), overwrite=True)


def download(src: "RemotePath", local: PathLike) -> None:
    """Copies the URL `src` (a file or a directory tree) to the local path `local`."""
    local = Path(local)
    if src.is_dir():
        local.mkdir(parents=True, exist_ok=True)
        for child in src.iterdir():
            download(child, local / child.name)
    else:
        src._g().copy(str(src), str(local), overwrite=True)


@contextlib.contextmanager
def local_copy(path: PathLike) -> Iterator[Path]:
    """A local path holding `path`'s content, for libraries that read only local files.

    A local path is yielded as is (no copy); a URL is downloaded to a temporary directory that
    is removed after the block.
    """
    path = location(path)
    if isinstance(path, Path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="xray_tfdata-") as tmp:
        target = Path(tmp) / (path.name or "download")
        download(path, target)
        yield target
