"""A labels CSV as a source: one row per image (how NIH, CheXpert, MIMIC-CXR, RSNA, COVIDx ship).

Columns (renamed with --csv_columns='path=Image Index,label=Finding Labels,patient_id=Patient ID'):
  path        the image, relative to the collection's data_dir (required)
  label       the source's label, mapped onto the build's --classes by --label_map
              (required; the class names themselves always map to themselves, case-insensitive)
  split       train / val / test (also training, valid, validation); empty = carved (optional)
  patient_id  replaced at once by a keyed hash (patients.py), never kept raw (optional)
Every other column is kept, as a JSON string of its non-empty values, in each record's
`image/source/metadata` (drop columns you must not share, e.g. names, before converting).

Multi-label rule (a label like `Pneumonia|Effusion`): the label is split on "|", each part is
looked up in the label map and unmapped parts are ignored. If the mapped parts name exactly one
class, the image gets it; if none is mapped the row is skipped (counted under its label in the
manifest's `skipped_labels`); if they name two classes (`COVID-19|No Finding`) the row is skipped
as ambiguous (counted in `skipped_labels` and `ambiguous_rows`). Skipped rows are not rejects.
Rejects (listed with a reason, and counting toward --max_reject_fraction): a file that is not
there, a path outside data_dir, a duplicate row (the first row is used), an unknown split.
"""

from __future__ import annotations

import collections
import csv
import functools
import io
import json
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

from xray_tfdata import labels, paths
from xray_tfdata.records import patients
from xray_tfdata.records.sources import (
    ScanResult,
    SourceFile,
    SourceSpec,
    unsupported_reason,
    key_of,
)

COLUMN_ROLES: tuple[str, ...] = ("path", "label", "split", "patient_id")
REQUIRED_ROLES: tuple[str, ...] = ("path", "label")
SPLIT_ALIASES = {"": "", "train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test"}


class RowRejects:
    """A label file's rejected rows: listed with their reason, counted by kind (`rejected_rows`).

    Shared with the collection presets (preset_reader.py), so both report rejects alike."""

    def __init__(self) -> None:
        self.listed: list[tuple[str, str]] = []
        self.kinds: collections.Counter[str] = collections.Counter()

    def add(self, kind: str, key: str, reason: str) -> None:
        self.kinds[kind] += 1
        self.listed.append((key, reason))

    def counts(self) -> dict[str, int]:
        return dict(sorted(self.kinds.items()))


def parse_columns(text: str) -> dict[str, str]:
    """'path=Image Index,label=Finding Labels' -> role -> column name (defaults: the role names).

    Raises:
      ValueError: an entry without "=", or a role other than path, label, split, patient_id.
    """
    columns = {role: role for role in COLUMN_ROLES}
    for entry in (e for e in str(text).split(",") if e.strip()):
        role, sep, column = entry.partition("=")
        role = role.strip()
        if not sep or role not in COLUMN_ROLES or not column.strip():
            raise ValueError(f"each entry must be role=Column Name with a role in {COLUMN_ROLES} "
                             f"(got {entry.strip()!r})")
        columns[role] = column.strip()
    return columns


def parse_label_map(text: str, classes: Sequence[str] = labels.DEFAULT_CLASSES
                    ) -> dict[str, str]:
    """'No Finding=NORMAL,COVID-19=COVID19' -> source label (case-folded) -> class name.

    The same map renames class folders (`COVID=COVID19,Viral Pneumonia=PNEUMONIA`). The class
    names of `classes` always map to themselves. Raises ValueError for an entry without "=" or a
    target that is not one of `classes`.
    """
    mapping = {name.casefold(): name for name in classes}
    for entry in (e for e in str(text).split(",") if e.strip()):
        source, sep, target = entry.partition("=")
        canonical = {c.casefold(): c for c in classes}.get(target.strip().casefold())
        if not sep or not source.strip() or canonical is None:
            raise ValueError(f"each entry must be 'source label=CLASS' with CLASS in "
                             f"{list(classes)} (got {entry.strip()!r}; --classes sets them)")
        mapping[source.strip().casefold()] = canonical
    return mapping


def map_label(raw: str, label_map: dict[str, str]) -> tuple[str, bool]:
    """(class name or "", ambiguous) for one CSV label, by the multi-label rule above."""
    classes = {label_map[p.strip().casefold()] for p in raw.split("|")
               if p.strip().casefold() in label_map}
    if len(classes) == 1:
        return classes.pop(), False
    return "", len(classes) > 1


def _cell(row: dict[str, str | None], present: dict[str, str], role: str) -> str:
    return (row.get(present[role]) or "").strip() if role in present else ""


def _header_columns(header: list[str], columns: dict[str, str], explicit: set[str],
                    csv_path: str) -> dict[str, str]:
    """The roles this CSV has; a missing required (or explicitly named) column raises."""
    present = {}
    for role, column in columns.items():
        if column in header:
            present[role] = column
        elif role in REQUIRED_ROLES or role in explicit:
            raise ValueError(
                f"{csv_path} has no {column!r} column for {role!r}; its columns are {header}. "
                f"Name the column with --csv_columns={role}=<column>.")
    return present


def _not_utf8(csv_path: str, err: UnicodeDecodeError) -> str:
    """One line: the file, where the first non-UTF-8 byte is, the likely encoding, the fix."""
    line = err.object[:err.start].count(b"\n") + 1
    return (f"labels_csv={csv_path!r} is not UTF-8: byte 0x{err.object[err.start]:02x} on line "
            f"{line} (byte {err.start}), as in Latin-1 / Windows-1252 (Excel's default). Re-save "
            "it as UTF-8 (e.g. `iconv -f cp1252 -t utf-8 in.csv > out.csv`) and pass that file.")


def _file_check(root: Path | paths.RemotePath) -> Callable[[Path | paths.RemotePath], bool]:
    """`path.is_file()`, except under a URL: there every file is listed once, up front (one
    request per row would take minutes on an object store)."""
    if isinstance(root, Path):
        return lambda path: path.is_file()
    listed = root.files_under()
    return lambda path: str(path) in listed


def read_labels_csv(spec: SourceSpec, columns_text: str, label_map_text: str,
                    key: bytes, classes: Sequence[str] = labels.DEFAULT_CLASSES) -> ScanResult:
    """Lists a CSV collection's images (sorted by relpath), its rejects, and its label counts.

    Raises:
      ValueError: the CSV or data_dir is missing, not UTF-8 (the message names the first bad
        byte's line and the fix), or a required column is absent.
    """
    # Either may be a URL (paths.py): the CSV is read and data_dir listed through gfile.
    root, csv_path = paths.location(spec.data_dir), spec.labels_csv
    if not root.is_dir():
        raise ValueError(f"data_dir={spec.data_dir!r} (the folder {csv_path}'s paths are "
                         "relative to) is not a directory.")
    if not paths.location(csv_path).is_file():
        raise ValueError(f"labels_csv={csv_path!r} is not a file.")
    is_file = _file_check(root)
    columns = parse_columns(columns_text)
    explicit = {e.partition("=")[0].strip() for e in columns_text.split(",") if e.strip()}
    label_map = parse_label_map(label_map_text, classes)
    files: list[SourceFile] = []
    rejects = RowRejects()
    skipped: collections.Counter[str] = collections.Counter()
    ambiguous, rows, seen = 0, 0, {}
    name = paths.location(csv_path).name
    try:
        text = paths.location(csv_path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(_not_utf8(csv_path, err)) from None
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        present = _header_columns(list(reader.fieldnames or []), columns, explicit, csv_path)
        others = [c for c in (reader.fieldnames or []) if c not in present.values()]
        for row in reader:
            rows += 1
            line = reader.line_num
            cell = functools.partial(_cell, row, present)
            raw_path = cell("path").replace("\\", "/")
            relpath = PurePosixPath(raw_path)
            k = key_of(spec.name, relpath.as_posix())
            if not raw_path or relpath.is_absolute() or ".." in relpath.parts:
                rejects.add("outside_data_dir", k if raw_path else f"{name} line {line}",
                            f"path {raw_path!r} is empty or outside data_dir")
                continue
            if k in seen:
                rejects.add("duplicate_row", k, f"duplicate row in {name}: line {line} repeats "
                            f"line {seen[k]} (the first is used)")
                continue
            seen[k] = line
            raw_label = cell("label")
            class_name, is_ambiguous = map_label(raw_label, label_map)
            if not class_name:
                skipped[raw_label] += 1
                ambiguous += is_ambiguous
                continue
            split_text = cell("split").lower()
            if split_text not in SPLIT_ALIASES:
                rejects.add("unknown_split", k, f"unknown split {split_text!r} in {name} line "
                            f"{line} (allowed: train, val, test or empty)")
                continue
            path = root / relpath
            if not is_file(path):
                rejects.add("missing_file", k,
                            f"missing: listed in {name} line {line}, no such file")
                continue
            if reason := unsupported_reason(path):
                rejects.add("unsupported_extension", k, reason)
                continue
            extra = {c: row[c] for c in others if row.get(c)}
            files.append(SourceFile(
                SPLIT_ALIASES[split_text], list(classes).index(class_name), class_name, str(path),
                k, spec.name, patients.patient_hash(key, spec.name, cell("patient_id")),
                json.dumps(extra, sort_keys=True) if extra else ""))
    files.sort(key=lambda f: f.relpath)
    details = {"file": csv_path, "rows": rows, "columns": present,
               "skipped_labels": dict(sorted(skipped.items())), "ambiguous_rows": ambiguous,
               "rejected_rows": rejects.counts()}
    return ScanResult(tuple(files), tuple(sorted(rejects.listed)), "csv", (("labels_csv", details),))
