"""The data the benchmarks run on: cached synthetic sources, cached records, convert subsets.

Generating 6,432 full-size X-rays takes minutes and building records from them about a minute per
format, so both are cached under the work dir in folders named by a hash of everything that
determines their content; a folder counts as complete only once its marker (sources) or manifest
(records) exists, because both are written last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from absl import logging

from xray_tfdata import files, labels
from xray_tfdata.records import synthetic

# Full-size sources, as in the Kaggle set (issues 2 and 3: 1000-2000 px JPEGs).
FULL_SIZE = (1000, 2000)


@dataclasses.dataclass(frozen=True)
class SyntheticPreset:
    name: str
    counts: dict[str, dict[str, int]]
    min_size: int
    max_size: int
    formats: tuple[str, ...] = ("jpeg",)
    modes: tuple[str, ...] = ("L", "RGB")  # the Kaggle JPEGs come both gray and gray-as-RGB
    seed: int = 0

    @property
    def num_images(self) -> int:
        return sum(n for per_class in self.counts.values() for n in per_class.values())


def _balanced(train: int, test: int) -> dict[str, dict[str, int]]:
    classes = synthetic.KAGGLE_CLASSES
    return {"train": {c: train for c in classes}, "test": {c: test for c in classes}}


PRESETS: dict[str, SyntheticPreset] = {
    # Seconds end to end: the tests' smoke runs. Small images; not a speed measurement.
    "tiny": SyntheticPreset("tiny", _balanced(8, 2), 64, 96),
    # A few hundred full-size images: quick convert numbers, a rough input comparison.
    "small": SyntheticPreset("small", _balanced(100, 20), *FULL_SIZE),
    # The Kaggle set's size and class counts at full resolution: the numbers the README quotes.
    "kaggle": SyntheticPreset("kaggle", synthetic.KAGGLE_COUNTS, *FULL_SIZE),
}


def _key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def synthetic_sources(preset_name: str, work_dir: str | os.PathLike) -> Path:
    """Returns a Kaggle-layout folder with the preset's images, generating it on first use."""
    preset = PRESETS[preset_name]
    payload = dataclasses.asdict(preset)
    folder = Path(work_dir) / f"sources-{preset.name}-{_key(payload)}"
    marker = folder / "COMPLETE.json"
    if marker.is_file():
        return folder
    logging.info("Generating %d synthetic X-rays (%s preset, %d-%d px) into %s ...",
                 preset.num_images, preset.name, preset.min_size, preset.max_size, folder)
    last = [time.monotonic()]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] > 15 or done == total:
            last[0] = time.monotonic()
            logging.info("  generated %d/%d images", done, total)

    # An interrupted generation leaves nothing behind (atomic_dir): the next run starts again,
    # and since it is seeded, makes the same images.
    with files.atomic_dir(folder) as tmp:
        info = synthetic.generate_dataset(
            tmp, preset.counts, min_size=preset.min_size, max_size=preset.max_size,
            formats=preset.formats, modes=preset.modes, seed=preset.seed, progress=progress,
        )
        files.write_json(tmp / "COMPLETE.json", {
            "preset": payload, "num_images": info["num_images"], "num_bytes": info["num_bytes"]})
    return folder


def source_files(data_dir: str | os.PathLike, split: str | None = None) -> list[tuple[str, int]]:
    """(path, label) of every source image, sorted by relative path; optionally one split."""
    from xray_tfdata.records import sources  # pylint: disable=import-outside-toplevel

    return [(f.path, f.label) for f in sources.scan(data_dir) if split is None or f.split == split]


def convert_subset(data_dir: str | os.PathLike, work_dir: str | os.PathLike, limit: int) -> Path:
    """A Kaggle-layout folder of symlinks to `limit` sources spread evenly over data_dir.

    Every k-th file in sorted order, so each split and class keeps its share. limit <= 0 or
    >= the number of files: data_dir itself.
    """
    from xray_tfdata.records import sources  # pylint: disable=import-outside-toplevel

    scanned = sources.scan(data_dir)  # not `files`: that name is the module used below
    if limit <= 0 or limit >= len(scanned):
        return Path(data_dir)
    step = len(scanned) / limit
    chosen = [scanned[int(i * step)] for i in range(limit)]
    key = _key({"data_dir": str(Path(data_dir).resolve()), "limit": limit})
    folder = Path(work_dir) / f"convert-subset-{limit}-{key}"
    if (folder / "COMPLETE").is_file():
        return folder
    with files.atomic_dir(folder) as tmp:  # a half-linked subset never looks complete
        for src in chosen:
            link = tmp / src.relpath
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(src.path).resolve())
        # The converter needs both splits to exist even if the subset misses one class.
        for split in ("train", "test"):
            (tmp / split).mkdir(parents=True, exist_ok=True)
        files.write_atomic(tmp / "COMPLETE", f"{len(chosen)}\n")
    return folder


# The modules whose code decides what the records hold: records are rebuilt when one changes.
def converter_code_key() -> str:
    """A hash of the converter's source files, records/*.py (cached records must match the
    current code)."""
    records = Path(__file__).resolve().parents[1] / "records"
    digest = hashlib.sha256()
    for path in sorted(records.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:10]


def records_for(data_dir: str | os.PathLike, work_dir: str | os.PathLike, *, image_size: int,
                channels: int, image_format: str) -> Path:
    """Records of data_dir in the given geometry/format, built once and reused.

    val_fraction=0 so the records' train split holds exactly the source train folder's images:
    every loader in the input comparison then handles the same images.
    """
    from xray_tfdata.records import convert, sources  # pylint: disable=import-outside-toplevel

    settings = {"data_dir": str(Path(data_dir).resolve()), "image_size": image_size,
                "channels": channels, "image_format": image_format,
                "converter_code": converter_code_key()}
    folder = Path(work_dir) / (
        f"records-{image_format}-{channels}ch-{image_size}-{_key(settings)}")
    if (folder / "dataset_info.json").is_file():
        return folder
    # Spawning a worker pool costs more than it saves on a few hundred images.
    num_workers = 1 if len(sources.scan(data_dir)) < 300 else 0
    logging.info("Building %s %dch %dpx records of %s into %s ...", image_format, channels,
                 image_size, data_dir, folder)
    config = convert.ConversionConfig(
        data_dir=str(data_dir), output_dir=str(folder), image_size=image_size, channels=channels,
        image_format=image_format, val_fraction=0.0, num_workers=num_workers,
    )
    convert.build_records(config, progress=False)
    return folder


def noise_sources(root: str | os.PathLike, n: int, side: int) -> Path:
    """n distinct blurred-noise PNGs of side x side, 80 % train / 20 % test, classes round-robin,
    in the Kaggle layout; made once per (root, n) and reused (the converter-scale benchmarks)."""
    import cv2  # noqa: PLC0415 - only the benchmarks that generate need it
    import numpy as np  # noqa: PLC0415

    root = Path(root)
    done = root / "COMPLETE"
    if done.is_file() and done.read_text() == str(n):
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(n)
    for i in range(n):
        folder = root / ("test" if i % 5 == 0 else "train") / labels.CLASS_NAMES[i % 3]
        if i < 15:  # every (split, class) folder appears among the first 15 images
            folder.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(0, 256, (side, side), dtype=np.uint8)
        image = cv2.normalize(cv2.GaussianBlur(noise, (0, 0), side / 12), None, 0, 255,
                              cv2.NORM_MINMAX)
        cv2.imwrite(str(folder / f"img{i:07d}.png"), image)
    done.write_text(str(n))
    return root
