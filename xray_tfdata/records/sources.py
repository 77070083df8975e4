"""Source files in: scan a collection's folders, and turn one source into its encoded outputs.

Folder layouts (names case-insensitive): `<data_dir>/{train,val,test}/<CLASS>/*` with any subset
of the splits (the Kaggle set has train/ and test/), or `<data_dir>/<CLASS>/**` without splits.
A labels CSV (`labels_csv.py`) lists the images instead. `scan` lists a folder deterministically; `process_source` is the per-image work the
converter's worker processes run (read + decode once, perceptual hash, resize, offline
augmentation, encode). This module imports numpy/OpenCV modules only, never TensorFlow: worker
processes import it, and TensorFlow would cost each of them ~1 s and hundreds of MB.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2

from xray_tfdata import labels, paths
from xray_tfdata.records import (
    dedupe,
    image_format,
    image_io,
    intensity,
    offline_augment,
    presets,
)

IMAGE_EXTENSIONS: tuple[str, ...] = image_format.SOURCE_EXTENSIONS
SOURCE_SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUIRED_SPLITS: tuple[str, ...] = ("train", "test")  # of a complete Kaggle download
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclasses.dataclass(frozen=True)
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


# ---------------------------------------------------------------------------------------------
# Per-image work, run in worker processes.


@dataclasses.dataclass(frozen=True)
class ProcessSettings:
    """What every output image looks like (a picklable subset of the conversion config)."""

    image_size: int
    resize_mode: str
    channels: int
    image_format: str
    jpeg_quality: int
    max_pixels: int = image_io.DEFAULT_MAX_PIXELS
    intensity: str = "none"  # records/intensity.INTENSITY_MODES


@dataclasses.dataclass(frozen=True)
class Task:
    """One source to process, with the augmentations the plan chose for it ("none" first)."""

    key: str  # relpath
    path: str
    augmentations: tuple[str, ...]
    # A URL source's bytes and signature, read by the parent (decode_pass): workers never
    # import TensorFlow (gfile), and a ram:// file exists only in the parent's memory.
    data: bytes | None = None
    signature: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class Processed:
    """A worker's result: encoded outputs + provenance, or the reason the source was rejected."""

    key: str
    signature: tuple[int, int]  # (size, mtime_ns) at read time: resume reuses it only if unchanged
    info: image_io.SourceInfo | None = None
    phash: int = 0
    outputs: tuple[tuple[str, bytes], ...] = ()
    reason: str = ""


def file_signature(path: str) -> tuple[int, int]:
    try:
        # A URL (parent process only: see Task) is stat'ed through its file system.
        st = paths.location(path).stat() if paths.is_url(path) else os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def process_source(task: Task, settings: ProcessSettings) -> Processed:
    """Decodes one source once and produces every planned output from that single decode.

    Augmentations run on the resized gray image: the network only ever sees `image_size` pixels,
    so a 3x3 filter means the same thing for a 400 px and a 4000 px source, and it is ~80x cheaper.
    Intensity normalisation runs before the resize, on the full image, as the serving signature
    applies it to an upload; the perceptual hash stays that of the un-normalised image, so
    deduplication does not depend on --intensity.
    """
    signature = task.signature or file_signature(task.path)
    normalised = settings.intensity != "none"
    try:
        # target_size lets libjpeg decode a large JPEG at 1/2 scale in the DCT domain (still >= 2x
        # the output side, so the area resize that follows sees enough pixels): ~1.7x faster decode.
        # Not with intensity normalisation: the serving signature equalises the FULL decode, and a
        # half-scale image has a (slightly) different histogram.
        target_size = 0 if normalised else settings.image_size
        gray, info = (image_io.read_source(task.path, target_size=target_size,
                                           max_pixels=settings.max_pixels)
                      if task.data is None else
                      image_io.decode_source_bytes(task.data, target_size=target_size,
                                                   max_pixels=settings.max_pixels))
        small = image_io.resize(gray, settings.image_size, settings.resize_mode)
        # The hash's own thumbnail is an area average, so hashing the (area-)resized output
        # gives nearly the same bits at 1/20 of the cost of a second pass over a 2000 px source
        # (measured: 5.9 ms -> 0.3 ms per image). Padded outputs would hash their black borders,
        # so pad mode hashes the full-size image.
        phash = dedupe.perceptual_hash(small if settings.resize_mode == "stretch" else gray)
        if normalised:
            small = image_io.resize(intensity.normalise(gray, settings.intensity),
                                    settings.image_size, settings.resize_mode)
        outputs = []
        for name in task.augmentations:
            image = small if name == "none" else offline_augment.parse_op(name)(small)
            image = image_io.to_channels(image, settings.channels)
            outputs.append((name, image_io.encode(image, settings.image_format,
                                                  settings.jpeg_quality)))
    except Exception as err:  # noqa: BLE001 - the per-source boundary: one file never stops a build
        return Processed(task.key, signature, reason=image_io.failure_reason(err))
    return Processed(task.key, signature, info, phash, tuple(outputs))


def init_worker() -> None:
    """Pool initializer: one OpenCV thread per worker process, so N workers use N cores.

    On Linux the worker also asks to be killed when its parent dies: after a `kill -9` of the
    converter, pool workers blocked on their task queue would otherwise linger forever.
    """
    cv2.setNumThreads(1)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # best effort: not every libc exposes prctl
