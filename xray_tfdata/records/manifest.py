"""`dataset_info.json`: the manifest the converter writes, and `DatasetInfo`, its typed view.

Every command reads the manifest once with `read_info` and passes the frozen DatasetInfo down;
no other module indexes the raw JSON. The class set is the `label_map` (names, ids in order).

Schema (format_version = features.FORMAT_VERSION):
{
  "format_version": 1,
  "created_by": "xray_tfdata 0.1.0",
  "args": {...the full ConversionConfig...},
  "label_map": {"NORMAL": 0, "COVID19": 1, "PNEUMONIA": 2},
  "image": {"size": 224, "channels": 1, "format": "jpeg", "resize_mode": "stretch"},
  "compression": "" | "GZIP",
  "splits": {
    "train": {
      "num_examples": 123,
      "per_class": {"NORMAL": 40, "COVID19": 43, "PNEUMONIA": 40},
      "originals_per_class": {...}, "variants_per_class": {...},
      "shards": [{"file": "train-00000-of-00008.tfrecord", "num_examples": 16,
                  "bytes": 123456, "sha256": "..."}, ...]
    }, "val": {...}, "test": {...}
  },
  (a split without examples is absent: a test-only collection gives "splits": {"test": ...};
   "per_source": {name: {class: n}} when collections are named; "patients": n distinct
   patient hashes when patient ids are given)
  "rejected": [{"path": "train/NORMAL/x.jpg", "reason": "truncated JPEG"}],
  "duplicates": {"exact": [{"sha256", "paths", "splits", "cross_split"}],
                 "near": [{"paths", "splits", "distance", "cross_split"}] (at most 10,000: the
                          closest, cross-split first), "near_pairs_total",
                 "near_cross_split_total", "near_pairs_listed",
                 "dropped": [{"path", "reason"}]},
  "sources": {name: {"layout": "splits" | "classes" | "csv" | a preset name, "splits_given": [...],
              "labels_csv": {"file", "rows", "columns", "skipped_labels", "ambiguous_rows",
                             "rejected_rows": {kind: n}},
              "preset": {"preset", "label_files", "rows", "skipped": {rule: n},
                         "kept": {class: {split | "carved": n}}, "classes_unavailable",
                         "rejected_rows", "skipped_findings", "skipped_views", "views",
                         "uncertain", "not_read" (preset_reader.py)}}}
             (absent for a single unnamed train/test folder: such manifests stay as before),
  "patient_overlap": {"patients": n, "mode": "warn"} (only when the input crossed splits)
}
No timestamps or host names: reruns of the same command produce byte-identical files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from xray_tfdata import files, labels, paths
from xray_tfdata.records import features

MANIFEST_NAME = "dataset_info.json"


class ManifestError(ValueError):
    """The records directory is missing its manifest or does not match the request."""


def manifest_path(records_dir: paths.PathLike) -> Path | paths.RemotePath:
    return paths.join(records_dir, MANIFEST_NAME)


def write_manifest(records_dir: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Writes the manifest atomically (temp file + rename), sorted keys, trailing newline."""
    return files.write_json(manifest_path(records_dir), manifest)


def read_manifest(records_dir: str | os.PathLike) -> dict[str, Any]:
    """The raw JSON (the converter's own resume check and tests); consumers use `read_info`."""
    path = manifest_path(records_dir)
    if not path.is_file():
        raise ManifestError(
            f"No {MANIFEST_NAME} in {str(records_dir)!r}. Build records first: "
            f"python -m xray_tfdata.build_records --data_dir=... --output_dir={records_dir}"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path} is not valid JSON ({err}); rebuild with --overwrite.") from err


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """What every record's image is: size x size x channels, its encoding and preprocessing."""

    size: int
    channels: int
    format: str
    resize_mode: str = "stretch"
    intensity: str = "none"

    def as_dict(self) -> dict[str, Any]:
        """The manifest's `image` entry (intensity only when set, as the converter writes it)."""
        out = {"size": self.size, "channels": self.channels, "format": self.format,
               "resize_mode": self.resize_mode}
        return {**out, "intensity": self.intensity} if self.intensity != "none" else out


@dataclasses.dataclass(frozen=True)
class Shard:
    file: str
    num_examples: int
    bytes: int = 0
    sha256: str = ""


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    """One split: its shards and counts per class (and per collection when they are named)."""

    num_examples: int
    per_class: Mapping[str, int]
    shards: tuple[Shard, ...]
    per_source: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    variants_per_class: Mapping[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """The manifest, read once into a type: every command reads it here and passes it down.

    `classes` is the label_map's names in id order (the class set of the records).
    """

    records_dir: str
    format_version: int | None
    classes: tuple[str, ...]
    image: ImageSpec
    compression: str
    splits: Mapping[str, SplitInfo]
    sources: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    num_rejected: int = 0

    @property
    def num_written(self) -> int:
        """Examples in every split (originals and variants)."""
        return sum(split.num_examples for split in self.splits.values())

    @property
    def label_map(self) -> dict[str, int]:
        return labels.label_map(self.classes)

    def require_split(self, split: str) -> SplitInfo:
        if split not in self.splits:
            raise ManifestError(
                f"Split {split!r} is not in the records at {self.records_dir!r}; "
                f"it has {sorted(self.splits)}.")
        return self.splits[split]

    def split_files(self, split: str) -> list[str]:
        """Absolute shard paths of a split, in manifest order; errors name the known splits."""
        return [str(paths.join(self.records_dir, shard.file))
                for shard in self.require_split(split).shards]

    def num_examples(self, split: str) -> int:
        return self.splits[split].num_examples if split in self.splits else 0

    def class_counts(self, split: str) -> list[int]:
        """Examples per class id (label order), e.g. for balanced class weights."""
        per_class = self.require_split(split).per_class
        return [int(per_class.get(name, 0)) for name in self.classes]

    def identity(self, splits: Sequence[str]) -> dict[str, Any]:
        """What a run reads from these records: image spec, label map and the splits' shards."""
        return {"image": self.image.as_dict(), "label_map": self.label_map,
                "shards": {split: [[s.file, s.num_examples, s.sha256]
                                   for s in (self.splits[split].shards
                                             if split in self.splits else ())]
                           for split in sorted(set(splits))}}


def _classes(manifest: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """The label_map's names in id order; ids must be 0..K-1 (the records' labels)."""
    mapping = manifest.get("label_map")
    if not isinstance(mapping, dict) or sorted(mapping.values()) != list(range(len(mapping))):
        raise ManifestError(f"The manifest{where} has label_map={mapping!r}, not names with ids "
                            "0..K-1. Rebuild the records with python -m xray_tfdata.build_records "
                            "--overwrite.")
    try:
        return labels.parse_classes(sorted(mapping, key=mapping.get))
    except ValueError as err:
        raise ManifestError(f"The manifest{where} has an invalid class set: {err}.") from None


def info_from_dict(manifest: Mapping[str, Any], records_dir: str | os.PathLike = ""
                   ) -> DatasetInfo:
    """The typed view of a manifest dict (e.g. the one `build_records` returns)."""
    where = f" in {str(records_dir)!r}" if records_dir else ""
    image = manifest.get("image") or {}
    splits = {
        name: SplitInfo(
            num_examples=int(split.get("num_examples", sum(split.get("per_class", {}).values()))),
            per_class={k: int(v) for k, v in split.get("per_class", {}).items()},
            shards=tuple(Shard(s["file"], int(s["num_examples"]), int(s.get("bytes", 0)),
                               s.get("sha256", "")) for s in split.get("shards", [])),
            per_source={n: {k: int(v) for k, v in c.items()}
                        for n, c in split.get("per_source", {}).items()},
            variants_per_class={k: int(v)
                                for k, v in split.get("variants_per_class", {}).items()})
        for name, split in manifest.get("splits", {}).items()}
    return DatasetInfo(
        records_dir=str(records_dir), format_version=manifest.get("format_version"),
        classes=_classes(manifest, where),
        image=ImageSpec(int(image.get("size", 0)), int(image.get("channels", 1)),
                        image.get("format", "jpeg"), image.get("resize_mode", "stretch"),
                        image.get("intensity", "none")),
        compression=manifest.get("compression", ""), splits=splits,
        sources=dict(manifest.get("sources", {})), num_rejected=len(manifest.get("rejected", [])))


def read_info(records_dir: str | os.PathLike) -> DatasetInfo:
    """Reads `<records_dir>/dataset_info.json` once into a DatasetInfo (ManifestError if absent)."""
    return info_from_dict(read_manifest(records_dir), records_dir)


def as_info(manifest: DatasetInfo | Mapping[str, Any], records_dir: str | os.PathLike = ""
            ) -> DatasetInfo:
    """A DatasetInfo as it is, or the typed view of a manifest dict (`info_from_dict`)."""
    return manifest if isinstance(manifest, DatasetInfo) else info_from_dict(manifest,
                                                                             records_dir)


def check_compatible(
    manifest: DatasetInfo | Mapping[str, Any],
    *,
    image_size: int | None = None,
    channels: int | None = None,
    records_dir: str | os.PathLike = "",
) -> None:
    """Refuses records whose format version, image size or channels differ.

    The message names what the records hold and what the caller asked for.
    """
    info = as_info(manifest, records_dir)
    where = f" in {str(records_dir or info.records_dir)!r}" if records_dir or info.records_dir \
        else ""
    if info.format_version != features.FORMAT_VERSION:
        raise ManifestError(
            f"Records{where} have format_version={info.format_version}, this code reads "
            f"format_version={features.FORMAT_VERSION}. Rebuild them with "
            f"python -m xray_tfdata.build_records --overwrite."
        )
    image = info.image
    if image_size is not None and image.size != image_size:
        raise ManifestError(
            f"Records{where} hold {image.size}x{image.size} images, but "
            f"image_size={image_size} was requested. Pass --image_size={image.size} "
            f"or rebuild the records with --image_size={image_size}."
        )
    if channels is not None and image.channels != channels:
        raise ManifestError(
            f"Records{where} hold {image.channels}-channel images, but "
            f"channels={channels} was requested. Pass channels={image.channels} "
            f"or rebuild the records with --channels={channels}."
        )


def split_files(records_dir: str | os.PathLike, manifest: DatasetInfo | Mapping[str, Any],
                split: str) -> list[str]:
    """Absolute shard paths of a split, in manifest order; errors name the known splits."""
    info = as_info(manifest, records_dir)
    return dataclasses.replace(info, records_dir=str(records_dir)).split_files(split)


def require_splits(manifest: DatasetInfo | Mapping[str, Any], splits: Sequence[str],
                   records_dir: str | os.PathLike = "", purpose: str = "this command") -> None:
    """Refuses records that lack one of `splits` (e.g. `train` on a test-only external set).

    The message names the splits the records have and how to get the missing ones.
    """
    have = sorted(as_info(manifest, records_dir).splits)
    missing = [s for s in splits if s not in have]
    if missing:
        where = f" in {str(records_dir)!r}" if records_dir else ""
        raise ManifestError(
            f"The records{where} have the split(s) {have} but {purpose} needs {list(splits)} "
            f"(missing {missing}). A test-only collection gives test records only: evaluate a "
            "trained model on it, or build records from a collection with training images "
            "(class folders or a train/ folder: val and test are carved from it).")
