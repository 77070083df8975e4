"""Every collection of a build, gathered: scanned folders and labels CSVs merged, patient groups.

A build reads one or more collections (`--data_dir=kaggle=/a,nih=/b`), each a folder layout
(sources.scan_sources) or a labels CSV (labels_csv.read_labels_csv). Keys are unique across
collections (a named collection's keys carry its `name:` prefix), so the merged lists sort and
plan exactly like one collection.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from xray_tfdata.records import dedupe, labels_csv, patients, preset_reader, sources
from xray_tfdata.records.conversion_state import SpillEntry


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Every collection's scan, merged: files and rejects sorted by key, facts per collection."""

    files: tuple[sources.SourceFile, ...]
    rejected: tuple[tuple[str, str], ...]
    collections: dict[str, dict[str, Any]]
    # A single unnamed train/test folder, the only input earlier versions read: its manifest
    # gets no new keys, so it stays byte-identical.
    legacy: bool


def scan(specs: Sequence[sources.SourceSpec], *, csv_columns: str = "", label_map: str = "",
         key: bytes = b"", rules: preset_reader.Rules | None = None) -> Inputs:
    """Scans every collection (folder layout, labels CSV or preset) and merges the results.

    `rules` (classes, views, uncertain) apply to preset collections; its key is replaced by `key`.
    Its classes are the build's class set for every collection: folder names and CSV labels map
    onto them through `label_map`.

    Raises:
      ValueError: a collection's layout or CSV is unreadable (the message names it).
    """
    rules = dataclasses.replace(rules or preset_reader.Rules(), key=key)
    found, rejected, collections = [], [], {}
    for spec in specs:
        if spec.layout:
            result = preset_reader.read_preset(spec, rules)
        elif spec.labels_csv:
            result = labels_csv.read_labels_csv(spec, csv_columns, label_map, key, rules.classes)
        else:
            result = sources.scan_sources(spec.data_dir, spec.name, rules.classes,
                                          labels_csv.parse_label_map(label_map, rules.classes))
        found += result.files
        rejected += result.rejected
        collections[spec.name] = {"layout": result.layout, **dict(result.details),
                                  "splits_given": sorted({f.split for f in result.files} - {""})}
    legacy = (len(specs) == 1 and not specs[0].name and not specs[0].labels_csv
              and not specs[0].layout
              and {"train", "test"} <= set(collections[""]["splits_given"]))
    return Inputs(tuple(sorted(found, key=lambda f: f.relpath)), tuple(sorted(rejected)),
                   collections, legacy)


def hashed_items(usable: Sequence[sources.SourceFile], index: Mapping[str, SpillEntry],
                 split_of: Mapping[str, str] | None = None) -> list[dedupe.HashedItem]:
    """What dedupe compares, per usable file: its key, split ("" before any is known) and hashes."""
    return [dedupe.HashedItem(f.relpath, split_of[f.relpath] if split_of else "",
                              index[f.relpath].info.sha256, index[f.relpath].phash)
            for f in usable]


def find_links(usable: Sequence[sources.SourceFile], index: Mapping[str, SpillEntry],
               near_distance: int) -> dict:
    """Exact and near duplicates among the usable files, before any split is known."""
    return dedupe.find_duplicates(hashed_items(usable, index), near_distance)


def patient_groups(usable: Sequence[sources.SourceFile], links: dict) -> dict[str, str]:
    """key -> group id: each patient's images, joined by the duplicate `links` (find_links)."""
    pairs = [g["paths"] for g in links["exact"]] + [p["paths"] for p in links["near"]]
    return patients.groups([f.relpath for f in usable], {f.relpath: f.patient for f in usable},
                           pairs)
