"""Every file under a collection's folder, listed once, found by name or by the path a label file gives.

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
    """Base name -> relpaths (POSIX, relative to root) of every visible file under `root`."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.by_name: dict[str, list[str]] = {}
        for folder, dirs, names in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # .git, .DS_Store folders
            rel = Path(folder).relative_to(self.root)
            for name in sorted(names):
                if not name.startswith("."):
                    self.by_name.setdefault(name, []).append((rel / name).as_posix())

    def __len__(self) -> int:
        return sum(len(paths) for paths in self.by_name.values())

    def relpaths(self) -> list[str]:
        """Every indexed file, sorted."""
        return sorted(p for paths in self.by_name.values() for p in paths)

    def glob(self, pattern: str) -> list[str]:
        """Relpaths of the files whose base name matches `pattern` (fnmatch), or it + ".gz"."""
        return sorted(p for name, paths in self.by_name.items()
                      if fnmatch.fnmatchcase(name, pattern)
                      or fnmatch.fnmatchcase(name, pattern + ".gz")
                      for p in paths)

    def lookup(self, listed: str) -> Found:
        """The file a label file's path means (see the module's matching rule)."""
        want = PurePosixPath(listed.replace("\\", "/").strip("/")).parts
        if not want:
            return Found()
        best, ties = 0, []
        for candidate in self.by_name.get(want[-1], ()):
            have = PurePosixPath(candidate).parts
            shared = min(len(have), len(want))
            if have[-shared:] != want[-shared:]:
                continue  # neither path is a suffix of the other: another file of that name
            if shared > best:
                best, ties = shared, [candidate]
            elif shared == best:
                ties.append(candidate)
        if len(ties) == 1:
            return Found(ties[0])
        return Found("", tuple(ties))

    def path(self, relpath: str) -> str:
        return str(self.root / relpath)
