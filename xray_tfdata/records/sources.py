"""Source files in: scan a collection's folders and labels into the list of sources to convert.

Folder layouts (names case-insensitive): `<data_dir>/{train,val,test}/<CLASS>/*` with any subset
of the splits (the Kaggle set has train/ and test/), or `<data_dir>/<CLASS>/**` without splits.
A labels CSV (`labels_csv.py`) lists the images instead. `scan` lists a folder deterministically;
the per-image work of the converter's workers is `decode_pass.process_source`. Never imports
TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from xray_tfdata import labels, paths
from xray_tfdata.records import image_format, presets

IMAGE_EXTENSIONS: tuple[str, ...] = image_format.SOURCE_EXTENSIONS
SOURCE_SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUIRED_SPLITS: tuple[str, ...] = ("train", "test")  # of a complete Kaggle download


@dataclasses.dataclass(frozen=True, slots=True)  # one per source: no per-object __dict__
class SourceFile:
    """One image file of one collection. `relpath` is its unique key in the whole build.

    `relpath` is the POSIX path relative to its data_dir, prefixed with `<source>:` for a named
    collection (`--data_dir=nih=/data/nih` -> "nih:images/001.png"). `split` is "train", "val",
    "test" (from a folder or a CSV split column) or "" (not given: the converter carves it).
    `patient` is the keyed hash of the patient id (never the raw id), "" when there is none.
    """

    split: str
    label: int
    class_name: str
    path: str
    relpath: str
    source: str = ""
    patient: str = ""
    metadata: str = ""  # JSON of a labels CSV's other columns, "" when none


@dataclasses.dataclass(frozen=True)
class ScanResult:
    files: tuple[SourceFile, ...]
    # (relpath, reason) for entries inside class folders that are not image files at all.
    rejected: tuple[tuple[str, str], ...]
    layout: str = "splits"  # "splits" ({train,val,test}/<CLASS>/*), "classes" (<CLASS>/**), "csv"
    # Source-specific facts for the manifest (e.g. a labels CSV's skipped labels).
    details: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One collection of a build: its name ("" for a single unnamed --data_dir) and where it is."""

    name: str
    data_dir: str
    labels_csv: str = ""
    layout: str = ""  # a collection preset's name (presets.py), "" for folders / a labels CSV


_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def _named_entries(text: str, what: str) -> list[tuple[str, str]]:
    """'a=/x,b=/y' -> [('a', '/x'), ('b', '/y')]; a single '/x' -> [('', '/x')]."""
    entries = [e.strip() for e in str(text).split(",") if e.strip()]
    out = []
    for entry in entries:
        name, sep, value = entry.partition("=")
        if sep and _NAME_RE.match(name.strip()) and value.strip():
            out.append((name.strip(), value.strip()))
        elif len(entries) == 1:
            out.append(("", entry))
        else:
            raise ValueError(f"every entry of a multi-collection {what} needs a name: "
                             f"name=path (got {entry!r})")
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{what} names a collection twice ({names})")
    return out


def parse_source_specs(data_dir: str, labels_csv: str = "", layout: str = "") -> list[SourceSpec]:
    """Parses --data_dir ('/a' or 'kaggle=/a,nih=/b'), --labels_csv and --layout (the same form).

    `layout` is a preset name (presets.py) or `folders` / `csv` (the default: a labels CSV when
    given, else the folder layout), for every collection or as name=layout entries.

    Raises:
      ValueError: an unnamed entry among several, a name used twice, a labels CSV or layout for a
        collection that --data_dir does not name, an unknown layout, or a preset given a labels
        CSV as well (the message says which).
    """
    dirs = _named_entries(data_dir, "data_dir")
    if not dirs:
        raise ValueError("data_dir is empty")
    names = [n for n, _ in dirs]
    csvs = _per_collection(labels_csv, "labels_csv", names)
    # One unnamed layout (the default "folders", or e.g. two CheXpert downloads) is every
    # collection's.
    layouts = (dict.fromkeys(names, layout.strip()) if "=" not in str(layout)
               else _per_collection(layout, "layout", names))
    specs = []
    for name, path in dirs:
        chosen = layouts.get(name) or "folders"
        if chosen not in presets.LAYOUTS:
            raise ValueError(f"layout {chosen!r} is not one of {list(presets.LAYOUTS)}")
        if chosen == "csv" and not csvs.get(name):
            raise ValueError(f"layout csv needs a labels_csv for collection {name or path!r}")
        if chosen in presets.PRESETS and csvs.get(name):
            raise ValueError(f"layout {chosen} reads the collection's own label files: drop the "
                             f"labels_csv of collection {name or path!r}")
        specs.append(SourceSpec(name, path, csvs.get(name, ""),
                                chosen if chosen in presets.PRESETS else ""))
    return specs


def _per_collection(text: str, what: str, names: list[str]) -> dict[str, str]:
    """name -> value of a per-collection flag; an unnamed value goes to a single collection."""
    values = dict(_named_entries(text, what)) if str(text).strip() else {}
    if "" in values and names != [""]:
        if len(names) != 1:
            raise ValueError(f"{what} must name its collection (name=value) when "
                             f"data_dir has several: {names}")
        values = {names[0]: values.pop("")}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{what} names {unknown}, which data_dir does not define "
                         f"(data_dir names {names})")
    return values


def subdirs(folder: Path) -> dict[str, Path]:
    """Visible subfolders of `folder` by name, sorted (the layout checks and the download tool)."""
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def _match(found: dict[str, Path], expected: Sequence[str], where: str,
           aliases: Mapping[str, str] | None = None, hint: str = "") -> dict[str, Path]:
    """Maps expected names to folders (case-insensitive; `aliases`: case-folded folder name ->
    expected name, e.g. --label_map's `covid -> COVID19`); unknown or ambiguous folders raise."""
    lower = {name.lower(): name for name in expected}
    lower.update({k.lower(): v for k, v in (aliases or {}).items()})
    matched: dict[str, Path] = {}
    unknown = []
    for name, path in found.items():
        canonical = lower.get(name.lower())
        if canonical is None:
            unknown.append(name)
        elif canonical in matched:
            raise ValueError(
                f"{where} has two folders for {canonical!r}: {matched[canonical].name!r} and "
                f"{name!r} (names are case-insensitive; --label_map renames folders). Merge them "
                "into one folder."
            )
        else:
            matched[canonical] = path
    if unknown:
        raise ValueError(
            f"Unexpected folder(s) {sorted(unknown)} in {where}. Found {sorted(found)}; expected "
            f"only {list(expected)} (case-insensitive). {hint or ''}Move the other folders out "
            "of the data dir."
        )
    return matched


def key_of(source: str, relpath: str) -> str:
    """The build-wide key of a file: its relpath, prefixed with `<source>:` when named."""
    return f"{source}:{relpath}" if source else relpath


def unsupported_reason(entry: Path) -> str:
    """"" if `entry` may be a source image (a known extension, or none and the DICOM marker:
    image_format.is_source_file), else the reason it is rejected."""
    if image_format.is_source_file(entry):
        return ""
    return (f"unsupported extension {entry.suffix!r} (allowed: "
            f"{', '.join(IMAGE_EXTENSIONS)}, or DICOM files without an extension)")


def _root_or_raise(data_dir: str | os.PathLike) -> Path:
    root = paths.location(data_dir)  # a URL is listed through its file system (paths.py)
    if not root.is_dir():
        raise ValueError(
            f"data_dir={str(data_dir)!r} is not a directory. Download the Kaggle set with "
            "`python tools/download_dataset.py` or generate one with "
            "`python tools/make_synthetic_dataset.py`, then pass its folder as --data_dir."
        )
    return root


def folder_layout(data_dir: str | os.PathLike,
                  class_folders: Sequence[str] = labels.DEFAULT_CLASSES) -> str:
    """"splits" when data_dir holds split folders (any of train/val/test), "classes" when it holds
    class folders (`class_folders`: the class names and the folder names --label_map maps)
    directly.

    Raises:
      ValueError: not a directory, no folders, or folders of neither kind (found vs expected).
    """
    root = _root_or_raise(data_dir)
    found = subdirs(root)
    names = {n.lower() for n in found}
    if names & set(SOURCE_SPLITS):
        return "splits"
    if names & {c.lower() for c in class_folders}:
        return "classes"
    raise ValueError(
        f"data_dir {str(root)!r} holds neither split folders {list(SOURCE_SPLITS)} nor class "
        f"folders {list(class_folders)} (case-insensitive); found {sorted(found)}. Name the "
        "classes with --classes, map other folder names with --label_map=Folder=CLASS, or use "
        "<data_dir>/{train,val,test}/<CLASS>/* (any subset of splits), <data_dir>/<CLASS>/** "
        "(splits are carved), or list the images in a --labels_csv."
    )


def scan_sources(data_dir: str | os.PathLike, source: str = "",
                 classes: Sequence[str] = labels.DEFAULT_CLASSES,
                 folder_map: Mapping[str, str] | None = None) -> ScanResult:
    """Lists every image of a folder collection, sorted by relpath.

    Class folders are the names of `classes` or, through `folder_map` (--label_map: case-folded
    folder name -> class), other names (the COVID-19 Radiography Database's `Viral Pneumonia`).

    Two layouts (folder names case-insensitive): `{train,val,test}/<CLASS>/*`, any subset of the
    splits (a test-only external set gives test records only), and `<CLASS>/**` (recursive, no
    splits: the converter carves val and test).

    Raises:
      ValueError: data_dir is missing, or holds unknown folders (the message lists what was
        found and what was expected).
    """
    root = _root_or_raise(data_dir)
    aliases = dict(folder_map or {})
    layout = folder_layout(root, [*classes, *aliases])
    hint = (f"Map a folder onto a class with --label_map=<folder>=<CLASS>, or add its class to "
            f"--classes (now {','.join(classes)}). ")
    label_of = {name: i for i, name in enumerate(classes)}
    files: list[SourceFile] = []
    rejected: list[tuple[str, str]] = []

    def add(split: str, class_name: str, entry: Path) -> None:
        relpath = key_of(source, entry.relative_to(root).as_posix())
        if reason := unsupported_reason(entry):
            rejected.append((relpath, reason))
        else:
            files.append(SourceFile(split, label_of[class_name], class_name, str(entry),
                                    relpath, source))

    if layout == "classes":
        for class_name, class_dir in _match(subdirs(root), classes, f"data_dir {str(root)!r}",
                                            aliases, hint).items():
            for entry in sorted(class_dir.rglob("*")):
                hidden = any(part.startswith(".") for part in entry.relative_to(class_dir).parts)
                if not hidden and not entry.is_dir():  # .DS_Store, editor swap files: never data
                    add("", class_name, entry)
    else:
        split_dirs = _match(subdirs(root), SOURCE_SPLITS, f"data_dir {str(root)!r}")
        for split, split_dir in split_dirs.items():
            where = f"{str(split_dir)!r}"
            for class_name, class_dir in _match(subdirs(split_dir), classes, where, aliases,
                                                hint).items():
                for entry in sorted(class_dir.iterdir()):
                    if entry.name.startswith("."):
                        continue  # .DS_Store, editor swap files: never data
                    if entry.is_dir():
                        rejected.append((key_of(source, entry.relative_to(root).as_posix()),
                                         "directory inside a class folder (not scanned)"))
                    else:
                        add(split, class_name, entry)
    files.sort(key=lambda f: f.relpath)
    rejected.sort()
    return ScanResult(tuple(files), tuple(rejected), layout)


def kaggle_layout_problems(data_dir: str | os.PathLike) -> list[str]:
    """What keeps `data_dir` from being a complete Kaggle folder ([] = it is one).

    The one layout check shared with tools/download_dataset.py: it runs the converter's own folder
    checks (unknown or case-clashing folders, as `scan_sources` raises them), then requires what the
    Kaggle download holds: train/ and test/, each with the three class folders, none empty. So the
    download tool can never print a --data_dir the converter refuses.
    """
    root = Path(data_dir)
    if not root.is_dir():
        return [f"{str(root)!r} is not a directory"]
    try:
        split_dirs = _match(subdirs(root), SOURCE_SPLITS, f"data_dir {str(root)!r}")
        class_dirs = {split: _match(subdirs(folder), labels.CLASS_NAMES, f"{str(folder)!r}")
                      for split, folder in split_dirs.items()}
    except ValueError as err:
        return [str(err)]
    problems = [f"no {s}/ folder" for s in REQUIRED_SPLITS if s not in split_dirs]
    for split, classes in sorted(class_dirs.items()):
        missing = [c for c in labels.CLASS_NAMES if c not in classes]
        if missing:
            problems.append(f"{split}/ lacks {missing} (has {sorted(subdirs(split_dirs[split]))})")
        empty = [c for c, folder in classes.items()
                 if not any(p.is_file() and not p.name.startswith(".") for p in folder.iterdir())]
        if empty:
            problems.append(f"{split}/ has no files in {empty}")
    return problems


def scan(data_dir: str | os.PathLike) -> list[SourceFile]:
    """The image files of `data_dir`, sorted by relpath (see `scan_sources`)."""
    return list(scan_sources(data_dir).files)
