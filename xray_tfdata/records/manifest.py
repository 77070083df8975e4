"""`dataset_info.json`: the manifest the converter writes and every reader checks.

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

import json
import os
from pathlib import Path
from typing import Any, Sequence

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


def check_compatible(
    manifest: dict[str, Any],
    *,
    image_size: int | None = None,
    channels: int | None = None,
    records_dir: str | os.PathLike = "",
) -> None:
    """Refuses records whose format version, image size, channels or label map differ.

    The message names what the records hold and what the caller asked for.
    """
    where = f" in {str(records_dir)!r}" if records_dir else ""
    version = manifest.get("format_version")
    if version != features.FORMAT_VERSION:
        raise ManifestError(
            f"Records{where} have format_version={version}, this code reads "
            f"format_version={features.FORMAT_VERSION}. Rebuild them with "
            f"python -m xray_tfdata.build_records --overwrite."
        )
    if manifest.get("label_map") != labels.LABEL_MAP:
        raise ManifestError(
            f"Records{where} use label_map={manifest.get('label_map')}, expected "
            f"{labels.LABEL_MAP} (0 = NORMAL, 1 = COVID19, 2 = PNEUMONIA). Rebuild them."
        )
    image = manifest.get("image", {})
    if image_size is not None and image.get("size") != image_size:
        raise ManifestError(
            f"Records{where} hold {image.get('size')}x{image.get('size')} images, but "
            f"image_size={image_size} was requested. Pass --image_size={image.get('size')} "
            f"or rebuild the records with --image_size={image_size}."
        )
    if channels is not None and image.get("channels") != channels:
        raise ManifestError(
            f"Records{where} hold {image.get('channels')}-channel images, but "
            f"channels={channels} was requested. Pass channels={image.get('channels')} "
            f"or rebuild the records with --channels={channels}."
        )


def split_files(records_dir: str | os.PathLike, manifest: dict[str, Any], split: str) -> list[str]:
    """Absolute shard paths of a split, in manifest order; errors name the known splits."""
    splits = manifest.get("splits", {})
    if split not in splits:
        raise ManifestError(
            f"Split {split!r} is not in the records at {str(records_dir)!r}; "
            f"it has {sorted(splits)}."
        )
    return [str(paths.join(records_dir, shard["file"])) for shard in splits[split]["shards"]]


def require_splits(manifest: dict[str, Any], splits: Sequence[str],
                   records_dir: str | os.PathLike = "", purpose: str = "this command") -> None:
    """Refuses records that lack one of `splits` (e.g. `train` on a test-only external set).

    The message names the splits the records have and how to get the missing ones.
    """
    have = sorted(manifest.get("splits", {}))
    missing = [s for s in splits if s not in have]
    if missing:
        where = f" in {str(records_dir)!r}" if records_dir else ""
        raise ManifestError(
            f"The records{where} have the split(s) {have} but {purpose} needs {list(splits)} "
            f"(missing {missing}). A test-only collection gives test records only: evaluate a "
            "trained model on it, or build records from a collection with training images "
            "(class folders or a train/ folder: val and test are carved from it).")


def num_examples(manifest: dict[str, Any], split: str) -> int:
    return int(manifest["splits"][split]["num_examples"])


def class_names(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The records' class names in label order, from their label_map (the classes a model
    trained on them predicts)."""
    label_map = manifest.get("label_map") or labels.LABEL_MAP
    return tuple(name for name, _ in sorted(label_map.items(), key=lambda item: item[1]))


def class_counts(manifest: dict[str, Any], split: str) -> list[int]:
    """Examples per class id (label order), e.g. for balanced class weights."""
    per_class = manifest["splits"][split]["per_class"]
    return [int(per_class.get(name, 0)) for name in labels.CLASS_NAMES]
