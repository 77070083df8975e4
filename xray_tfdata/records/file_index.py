"""Every file under a collection's folder, listed once, found by the path a label file gives.

Public collections are downloaded in nested layouts that their label files ignore: NIH lists
`00000001_000.png` while the file sits in `images_001/images/`; CheXpert lists
`CheXpert-v1.0-small/train/patient00001/...` whether --data_dir is that folder or its parent;
PadChest lists `12/<ImageID>` and some mirrors flatten the numbered folders. So a preset never
builds a path: it asks this index for the listed path, and the index answers with the one file
whose path and the listed path agree on their trailing components.

Matching rule (`lookup`): a file matches when its path relative to data_dir is a suffix of the
listed path (data_dir is below the label file's root) or the listed path is a suffix of it (the
files are nested deeper than listed), compared component by component. Among matches the ones
sharing the most components win; two winners are a tie, reported with both paths, never guessed.
A missing file never falls back to another file of the same base name (patient00002's
`view1_frontal.jpg` is not patient00001's). One `os.walk`, sorted: deterministic on any file system.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from pathlib import Path, PurePosixPath


@dataclasses.dataclass(frozen=True)
class Found:
    """A lookup's answer: the relpath, or "" with the tied candidates ((): no file at all)."""

    relpath: str = ""
    tied: tuple[str, ...] = ()


class FileIndex:
    """Every visible file under `root` (POSIX relpaths), by base name and by trailing components."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.by_name: dict[str, list[str]] = {}
        start = len(str(self.root).rstrip(os.sep)) + 1
        for folder, dirs, names in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # .git, .DS_Store folders
            prefix = folder[start:].replace(os.sep, "/") + "/" if len(folder) >= start else ""
            for name in sorted(names):
                if not name.startswith("."):
                    self.by_name.setdefault(name, []).append(prefix + name)
        self._all = {p for paths in self.by_name.values() for p in paths}
        # n -> {last n components: relpaths}, built on first use: CheXpert names 200k files
        # `view1_frontal.jpg`, so filtering by base name alone would make lookups quadratic.
        self._by_tail: dict[int, dict[str, list[str]]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def relpaths(self) -> list[str]:
        """Every indexed file, sorted."""
        return sorted(self._all)

    def glob(self, pattern: str) -> list[str]:
        """Relpaths of the files whose base name matches `pattern` (fnmatch), or it + ".gz"."""
        return sorted(p for name, paths in self.by_name.items()
                      if fnmatch.fnmatchcase(name, pattern)
                      or fnmatch.fnmatchcase(name, pattern + ".gz")
                      for p in paths)

    def _tails(self, n: int) -> dict[str, list[str]]:
        if n not in self._by_tail:
            tails: dict[str, list[str]] = {}
            for relpath in sorted(self._all):
                parts = relpath.split("/")
                if len(parts) >= n:
                    tails.setdefault("/".join(parts[-n:]), []).append(relpath)
            self._by_tail[n] = tails
        return self._by_tail[n]

    def lookup(self, listed: str) -> Found:
        """The file a label file's path means (see the module's matching rule)."""
        want = PurePosixPath(listed.replace("\\", "/").strip("/")).parts
        if not want:
            return Found()
        # Files at or below the listed path share all its components: the best possible match.
        deeper = (self.by_name.get(want[0], []) if len(want) == 1
                  else self._tails(len(want)).get("/".join(want), []))
        if deeper:
            return Found(deeper[0]) if len(deeper) == 1 else Found("", tuple(deeper))
        # Else the longest trailing part of the listed path that is a whole relpath (data_dir
        # is below the label file's root): at most one file per length.
        for k in range(len(want) - 1, 0, -1):
            if (tail := "/".join(want[-k:])) in self._all:
                return Found(tail)
        return Found()

    def path(self, relpath: str) -> str:
        return str(self.root / relpath)
