"""The one engine behind `--layout=NAME`: a collection preset (presets.py) -> source files, report.

Per collection: index every file once (file_index.py), read the spec's label files (CSV, `.csv.gz`
or header-less whitespace text), join them, group rows by image, then apply the rules in a fixed
order, each counted in the manifest so a user sees what it did:
  1. unlabelled  - no row in a required join table (a MIMIC image whose study has no labels);
  2. view        - not a wanted view (--views; laterals by default), counted per view value;
  3. uncertain   - a mapped finding is uncertain (-1) and --uncertain=skip;
  4. the multi-label rule (labels_csv.map_label): no mapped finding -> unmapped_finding, two
     classes -> ambiguous.
Rows that pass are looked up on disk; a missing file, a name found twice (both paths named), a
duplicate row and an unknown split are rejects (labels_csv.RowRejects: listed with a reason, and
counted toward --max_reject_fraction). Patient ids are hashed at once (patients.patient_hash).
Stdlib only: runs in the converter's main process before the decode pass.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import json
import os
import re
from typing import Any, Iterable, Sequence, TextIO

from xray_tfdata import labels, paths
from xray_tfdata.records import file_index, labels_csv, patients, presets
from xray_tfdata.records.sources import (
    ScanResult,
    SourceFile,
    SourceSpec,
    key_of,
    unsupported_reason,
)

SKIP_RULES: tuple[str, ...] = ("unlabelled", "view", "uncertain", "unmapped_finding", "ambiguous")
_MAX_LISTED = 20  # skipped findings listed in the manifest, most frequent first


@dataclasses.dataclass(frozen=True)
class Rules:
    """The build's choices every preset is read with (ConversionConfig fields)."""

    classes: tuple[str, ...] = labels.CLASS_NAMES
    views: str = "frontal"
    uncertain: str = "skip"
    key: bytes = b""  # the patient-id HMAC key


@dataclasses.dataclass
class _Report:
    rows: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    findings: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    views: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    not_read: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    rejects: labels_csv.RowRejects = dataclasses.field(default_factory=labels_csv.RowRejects)


class _Row(dict):
    """A label row for `str.format_map`: a column the row lacks formats as ""."""

    def __missing__(self, column: str) -> str:
        return ""


def _open(path: str) -> TextIO:
    if path.endswith(".gz"):  # MIMIC ships its CSVs gzipped
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _whitespace_rows(f: TextIO, table: presets.Table) -> Iterable[dict[str, str]]:
    """Header-less, whitespace-separated lines; surplus tokens belong to `table.spaced`."""
    columns = list(table.columns)
    for line in f:
        tokens = line.split()
        if not tokens:
            continue
        if table.spaced and len(tokens) > len(columns):
            i, extra = columns.index(table.spaced), len(tokens) - len(columns)
            tokens = tokens[:i] + [" ".join(tokens[i:i + extra + 1])] + tokens[i + extra + 1:]
        yield dict(zip(columns, tokens))


def _read_table(index: file_index.FileIndex, table: presets.Table, preset: presets.Preset
                ) -> tuple[str, list[_Row]] | None:
    """(relpath, rows) of a spec's label file; None for an absent optional one.

    Raises:
      ValueError: a required file is absent, or the name matches two files (both named).
    """
    found = index.glob(table.pattern)
    if not found:
        if not table.required:
            return None
        raise ValueError(
            f"--layout={preset.name}: no file named {table.pattern!r} (or .gz) under "
            f"{str(index.root)!r}; the collection as downloaded has {preset.downloaded}. Point "
            "--data_dir at the folder holding the download.")
    if len(found) > 1:
        raise ValueError(f"--layout={preset.name}: {table.pattern!r} matches {found} under "
                         f"{str(index.root)!r}; keep one of them there.")
    given = {k: v for k, v in (("_split", table.split), ("_folder", table.folder)) if v}
    try:
        with _open(index.path(found[0])) as f:
            raw = _whitespace_rows(f, table) if table.columns else csv.DictReader(f)
            rows = [_Row({k: (v or "").strip() for k, v in row.items() if k}, **given)
                    for row in raw]
    except (OSError, UnicodeDecodeError, EOFError, csv.Error) as err:  # a truncated .gz, binary
        raise ValueError(f"--layout={preset.name}: cannot read {found[0]!r} under "
                         f"{str(index.root)!r} ({err}); download it again.") from err
    return found[0], rows


def _join(rows: list[_Row], joins: Sequence[tuple[presets.Table, list[_Row]]],
          report: _Report) -> list[_Row]:
    """Image rows with each join table's columns added (existing columns win)."""
    indexed = []
    for table, join_rows in joins:
        by_key: dict[tuple[str, ...], _Row] = {}
        for row in join_rows:
            by_key.setdefault(tuple(row.get(c, "") for c in table.join_on), row)
        indexed.append((table, by_key))
    kept = []
    for row in rows:
        for table, by_key in indexed:
            match = by_key.get(tuple(row.get(c, "") for c in table.join_on))
            if match is None and not table.keep_unmatched:
                report.skipped["unlabelled"] += 1
                break
            for column, value in (match or {}).items():
                row.setdefault(column, value)
        else:
            kept.append(row)
    return kept


def _states(row: _Row, findings: presets.Findings, columns: Iterable[str]) -> dict[str, str]:
    """finding (case-folded) -> "pos" / "unc" for one row; negatives are left out.

    `columns` are the preset's finding names as spelled in the file (per-finding columns)."""
    if isinstance(findings, presets.ColumnFindings):
        states = {}
        for column in columns:
            value = row.get(column, "")
            number = float(value) if re.fullmatch(r"-?\d+(\.\d*)?", value) else 0.0
            if number == 1:
                states[column.casefold()] = "pos"
            elif number == -1:
                states[column.casefold()] = "unc"
        return states
    raw = row.get(findings.column, "")
    if findings.python_list:  # "['pneumonia', 'infiltrates']"
        parts = [p.strip().strip("'\"") for p in raw.strip().strip("[]").split(",")]
    else:
        parts = raw.split(findings.sep) if findings.sep else [raw]
    return {p.strip().casefold(): "pos" for p in parts if p.strip()}


def _combine(per_row: list[dict[str, str]], rule: str) -> dict[str, str] | None:
    """One image's finding states from its rows; None when "same" rows disagree."""
    if rule == "majority":  # readers: positive when more than half of them say so
        n, pos, unc = len(per_row), collections.Counter(), collections.Counter()
        for states in per_row:
            pos.update(f for f, s in states.items() if s == "pos")
            unc.update(f for f, s in states.items() if s == "unc")
        combined = {f: "pos" for f in pos if 2 * pos[f] > n}
        combined.update({f: "unc" for f in unc if f not in combined and 2 * (pos[f] + unc[f]) > n})
        return combined
    if rule == "same" and any(states != per_row[0] for states in per_row[1:]):
        return None
    return per_row[0]


def _decide(states: dict[str, str], mapping: dict[str, str], uncertain: str) -> tuple[str, str]:
    """(class name, "") or ("", the skip rule), by labels_csv's multi-label rule."""
    if uncertain == "skip" and any(s == "unc" and f in mapping for f, s in states.items()):
        return "", "uncertain"
    found = [f for f, s in states.items() if s == "pos" or (s == "unc" and uncertain == "positive")]
    class_name, ambiguous = labels_csv.map_label("|".join(found), mapping)
    if class_name:
        return class_name, ""
    return "", "ambiguous" if ambiguous else "unmapped_finding"


def _view(row: _Row, preset: presets.Preset) -> str:
    return next((row[c].upper() for c in preset.view_columns if row.get(c)), "")


def view_wanted(view: str, preset: presets.Preset, views: str) -> bool:
    """Whether --views keeps an image of this view (a preset without view columns keeps all)."""
    if not preset.view_columns or views == "all":
        return True
    if views == "frontal":
        return view in preset.frontal
    return view in {v.strip().upper() for v in views.split(",")}


def _lookup(index: file_index.FileIndex, listed: str, where: str, source: str,
            report: _Report) -> str:
    """The relpath a listed image path means, or "" after recording why not (a reject)."""
    found = index.lookup(listed)
    if found.tied:
        report.rejects.add("found_twice", key_of(source, listed),
                           f"{listed!r} ({where}) is found twice: "
                           f"{' and '.join(repr(p) for p in found.tied)}; remove the copy")
        return ""
    if not found.relpath:
        report.rejects.add("missing_file", key_of(source, listed),
                           f"missing: listed in {where}, no such file under data_dir")
        return ""
    if reason := unsupported_reason(index.root / found.relpath):
        report.rejects.add("unsupported_extension", key_of(source, found.relpath), reason)
        return ""
    return found.relpath


def _split(row: _Row, preset: presets.Preset) -> str | None:
    """The given split ("" = carved by the converter), None for a value the spec does not know."""
    if row.get("_split"):
        return row["_split"]
    raw = row.get(preset.split_column, "").lower() if preset.split_column else ""
    return (preset.split_values or labels_csv.SPLIT_ALIASES).get(raw) if raw else ""


def _patient(row: _Row, preset: presets.Preset, listed: str) -> str:
    if preset.patient:
        return row.get(preset.patient, "")
    match = re.search(preset.patient_pattern, listed) if preset.patient_pattern else None
    return match.group(1) if match else ""


def _image_file(listed: str, group: list[_Row], preset: presets.Preset,
                mapping: dict[str, str], spec: SourceSpec, rules: Rules,
                index: file_index.FileIndex, report: _Report) -> SourceFile | None:
    """One listed image through the rules (module docstring); None when skipped or rejected."""
    first = group[0]
    if preset.rows_per_image == "one":
        for repeat in group[1:]:
            report.rejects.add("duplicate_row", key_of(spec.name, listed),
                               f"duplicate row: {repeat['_where']} repeats {first['_where']} "
                               "(the first is used)")
        group = group[:1]
    view = _view(first, preset)
    if not view_wanted(view, preset, rules.views):
        report.skipped["view"] += 1
        report.views[view or "(blank)"] += 1
        return None
    states = _combine([_states(r, preset.findings, preset.mapping) for r in group],
                      preset.rows_per_image)
    class_name, rule = ("", "ambiguous") if states is None else _decide(states, mapping,
                                                                        rules.uncertain)
    if rule:
        report.skipped[rule] += 1
        if isinstance(preset.findings, presets.ListFindings):
            report.findings[first.get(preset.findings.column, "")] += 1
        return None
    split = _split(first, preset)
    if split is None:
        report.rejects.add("unknown_split", key_of(spec.name, listed),
                           f"unknown split {first.get(preset.split_column)!r} in "
                           f"{first['_where']} (allowed: {sorted(preset.split_values)})")
        return None
    relpath = _lookup(index, listed, first["_where"], spec.name, report)
    if not relpath:
        return None
    meta = {c: first[c] for c in preset.metadata if first.get(c)}
    return SourceFile(split, rules.classes.index(class_name), class_name, index.path(relpath),
                      key_of(spec.name, relpath), spec.name,
                      patients.patient_hash(rules.key, spec.name, _patient(first, preset, listed)),
                      json.dumps(meta, sort_keys=True) if meta else "")


def _table_files(index: file_index.FileIndex, preset: presets.Preset, mapping: dict[str, str],
                 spec: SourceSpec, rules: Rules, report: _Report
                 ) -> tuple[list[SourceFile], list[str]]:
    """The images a spec's label files list, through the rules; and the label files read."""
    tables = []
    for table in preset.tables:
        if (read := _read_table(index, table, preset)) is not None:
            name = read[0].rsplit("/", 1)[-1]
            for i, row in enumerate(read[1]):
                row["_where"] = f"{name} row {i + 1}"
            tables.append((table, read))
    image_rows = [row for table, (_, rows) in tables if not table.join_on for row in rows]
    report.rows = len(image_rows)
    joins = [(table, rows) for table, (_, rows) in tables if table.join_on]
    groups: dict[str, list[_Row]] = {}  # listed image -> its rows, in file order
    for row in _join(image_rows, joins, report):
        groups.setdefault(preset.image.format_map(row).strip(), []).append(row)
    files, seen = [], {}
    for listed, group in groups.items():
        f = _image_file(listed, group, preset, mapping, spec, rules, index, report)
        if f is not None and f.relpath in seen:  # two listed names, one file (a flattened mirror)
            report.rejects.add("duplicate_row", f.relpath, f"{group[0]['_where']} and "
                               f"{seen[f.relpath]} name the same file (the first is used)")
        elif f is not None:
            seen[f.relpath] = group[0]["_where"]
            files.append(f)
    return files, [path for _, (path, _) in tables]


def _folder_files(index: file_index.FileIndex, preset: presets.Preset,
                  findings: presets.FolderFindings, mapping: dict[str, str], spec: SourceSpec,
                  rules: Rules, report: _Report) -> list[SourceFile]:
    """Images under class folders (any depth); mask folders never read; unmapped folders counted."""
    class_folders = {f.casefold() for f in preset.mapping}
    skip = {s.casefold() for s in findings.skip_folders}
    files = []
    for relpath in index.relpaths():
        folders = relpath.split("/")[:-1]
        if skip & {p.casefold() for p in folders}:
            report.not_read[next(p for p in folders if p.casefold() in skip)] += 1
            continue
        owner = next((p for p in folders if p.casefold() in class_folders), None)
        is_image = not unsupported_reason(index.root / relpath)
        if owner is None or owner.casefold() not in mapping:
            if is_image and folders:  # an image of a class folder this build has no class for
                report.rows += 1
                report.skipped["unmapped_finding"] += 1
                report.findings[owner or next((p for p in reversed(folders)
                                               if p.casefold() != "images"), folders[-1])] += 1
            continue  # metadata spreadsheets and READMEs beside the class folders
        report.rows += 1
        if not is_image:
            report.rejects.add("unsupported_extension", key_of(spec.name, relpath),
                               unsupported_reason(index.root / relpath))
            continue
        class_name = mapping[owner.casefold()]
        files.append(SourceFile("", rules.classes.index(class_name), class_name,
                                index.path(relpath), key_of(spec.name, relpath), spec.name))
    return files


def read_preset(spec: SourceSpec, rules: Rules) -> ScanResult:
    """Lists a preset collection's images (sorted by key), its rejects and its per-rule report.

    Raises:
      ValueError: data_dir is not a folder, or a required label file is absent or found twice.
    """
    preset = presets.PRESETS[spec.layout]
    if paths.is_url(spec.data_dir):  # the file index walks a local tree (os.scandir)
        raise ValueError(
            f"--layout={preset.name} reads a local folder, and data_dir={spec.data_dir!r} is a "
            "URL. Mount the bucket (e.g. gcsfuse) or copy the collection to local disk and pass "
            "that folder; the output_dir may stay a URL.")
    if not os.path.isdir(spec.data_dir):
        raise ValueError(f"data_dir={spec.data_dir!r} (--layout={preset.name}) is not a "
                         f"directory; it should hold {preset.downloaded}.")
    index = file_index.FileIndex(spec.data_dir)
    report = _Report()
    mapping = {f.casefold(): c for f, c in preset.mapping.items() if c in rules.classes}
    if isinstance(preset.findings, presets.FolderFindings):
        files = _folder_files(index, preset, preset.findings, mapping, spec, rules, report)
        label_files: list[str] = []
    else:
        files, label_files = _table_files(index, preset, mapping, spec, rules, report)
    files.sort(key=lambda f: f.relpath)
    return ScanResult(tuple(files), tuple(sorted(report.rejects.listed)), preset.name,
                      (("preset", _details(preset, rules, mapping, label_files, files, report)),))


def _details(preset: presets.Preset, rules: Rules, mapping: dict[str, str],
             label_files: list[str], files: list[SourceFile], report: _Report) -> dict[str, Any]:
    """The manifest's per-collection report: what each rule did, what was kept where."""
    kept: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for f in files:
        kept[f.class_name][f.split or "carved"] += 1
    details: dict[str, Any] = {
        "preset": preset.name, "label_files": label_files, "rows": report.rows,
        "skipped": {rule: report.skipped[rule] for rule in SKIP_RULES},
        "kept": {c: dict(sorted(kept[c].items())) for c in rules.classes if c in kept},
        "classes_unavailable": [c for c in rules.classes if c not in mapping.values()],
        "rejected_rows": report.rejects.counts(),
    }
    if report.findings:
        details["skipped_findings"] = dict(report.findings.most_common(_MAX_LISTED))
    if preset.view_columns:
        details["views"] = rules.views
        details["skipped_views"] = dict(sorted(report.views.items()))
    if isinstance(preset.findings, presets.ColumnFindings):
        details["uncertain"] = rules.uncertain
    if report.not_read:
        details["not_read"] = dict(sorted(report.not_read.items()))
    return details
