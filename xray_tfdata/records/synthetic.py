"""Synthetic chest X-rays in the Kaggle folder layout: the built-in data for the quickstart and tests.

`generate_dataset` writes `out_dir/{train,test}/{COVID19,NORMAL,PNEUMONIA}/<CLASS>(<n>).<ext>`, the
layout of the Kaggle set `prashant268/chest-xray-covid19-pneumonia`, so every tool that reads the
real data reads this too. Each image is a grayscale frontal chest radiograph cartoon whose class
shows in the lungs, large enough to survive a resize to 64x64:

- NORMAL: clear, dark lung fields.
- COVID19: hazy (ground-glass) opacities in the periphery and lower zones of BOTH lungs.
- PNEUMONIA: a dense lobar consolidation filling the upper or lower part of ONE lung.

Nuisances that carry no class signal: body size, position and tilt, rib and vessel pattern,
contrast, gamma, brightness, grain, a side marker, the file's size, aspect, format (JPEG/PNG) and
saved mode (gray, gray-as-RGB, 16-bit PNG). Every nuisance is drawn from the same distribution for
every class, so a model that scores well has learned the lungs, not a file-format shortcut.

Speed: each image is rendered at a small working resolution (short side `_RENDER_SHORT` px), then
upsampled and given full-resolution grain, so a 2000 px image costs little more than its encoding.
Seeded per image from (seed, split, class, index): same arguments -> byte-identical files, and
adding images to one class or split leaves the others unchanged.

numpy + cv2 only (no TensorFlow): usable from worker processes and light scripts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from xray_tfdata import files, labels

# Folder order of the Kaggle archive; label ids come from labels.LABEL_MAP, never from this order.
KAGGLE_CLASSES: tuple[str, ...] = ("COVID19", "NORMAL", "PNEUMONIA")
KAGGLE_COUNTS: dict[str, dict[str, int]] = {
    "train": {"COVID19": 460, "NORMAL": 1266, "PNEUMONIA": 3418},
    "test": {"COVID19": 116, "NORMAL": 317, "PNEUMONIA": 855},
}  # 6,432 images, the Kaggle set's split and class sizes.
GENERATED_SPLITS: tuple[str, ...] = ("train", "val", "test")
FORMATS: tuple[str, ...] = ("jpeg", "png")
MODES: tuple[str, ...] = ("L", "RGB", "I;16")  # gray, gray saved as 3 channels, 16-bit gray (PNG only)
_EXTENSIONS = {"jpeg": ".jpg", "png": ".png"}
_SIZE_RANGE = (16, 8192)
_RENDER_SHORT = 128  # working resolution of the anatomy; class patterns are far coarser than this
_SPLIT_KEYS = {"train": 0, "val": 1, "test": 2}


def small_counts(per_class_train: int = 20, per_class_test: int = 5) -> dict[str, dict[str, int]]:
    """Balanced counts for a small dataset: `per_class_*` images of every class in train and test."""
    return {
        "train": {name: per_class_train for name in KAGGLE_CLASSES},
        "test": {name: per_class_test for name in KAGGLE_CLASSES},
    }


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Validated settings of one `generate_dataset` call (class names canonical upper case)."""

    counts: Mapping[str, Mapping[str, int]]
    min_size: int = 256
    max_size: int = 512
    formats: tuple[str, ...] = ("jpeg", "png")
    modes: tuple[str, ...] = ("L", "RGB")
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.counts, Mapping) or not self.counts:
            raise ValueError(
                f"counts must be a non-empty dict {{split: {{class: n}}}}. Received: counts={self.counts!r}. "
                "Use synthetic.small_counts(...) or synthetic.KAGGLE_COUNTS."
            )
        canonical: dict[str, dict[str, int]] = {}
        for split, per_class in self.counts.items():
            if split not in GENERATED_SPLITS:
                raise ValueError(
                    f"counts has split {split!r}; allowed splits: {', '.join(GENERATED_SPLITS)}."
                )
            canonical[split] = {}
            for name, n in dict(per_class).items():
                canon = str(name).upper()
                if canon not in labels.LABEL_MAP:
                    raise ValueError(
                        f"counts[{split!r}] has class {name!r}; allowed: {', '.join(KAGGLE_CLASSES)} "
                        "(case-insensitive)."
                    )
                if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
                    raise ValueError(
                        f"counts[{split!r}][{name!r}]={n!r} must be an integer >= 0."
                    )
                canonical[split][canon] = int(n)
        object.__setattr__(self, "counts", canonical)
        lo, hi = _SIZE_RANGE
        if not (lo <= self.min_size <= self.max_size <= hi):
            raise ValueError(
                f"Image side range must satisfy {lo} <= min_size <= max_size <= {hi}. "
                f"Received: min_size={self.min_size}, max_size={self.max_size}."
            )
        object.__setattr__(self, "formats", tuple(self.formats))
        object.__setattr__(self, "modes", tuple(self.modes))
        for field, values, allowed in (("formats", self.formats, FORMATS), ("modes", self.modes, MODES)):
            bad = [v for v in values if v not in allowed]
            if not values or bad:
                raise ValueError(
                    f"{field}={values!r}: each entry must be one of {', '.join(allowed)} "
                    "and at least one is required."
                )
        if not any(_compatible(f, m) for f in self.formats for m in self.modes):
            raise ValueError(
                f"No format/mode pair can be saved: formats={self.formats}, modes={self.modes}. "
                "16-bit 'I;16' needs 'png' in formats."
            )

    @property
    def num_images(self) -> int:
        return sum(n for per_class in self.counts.values() for n in per_class.values())


def _compatible(image_format: str, mode: str) -> bool:
    return not (mode == "I;16" and image_format != "png")


# ---------------------------------------------------------------------------------------------
# Rendering: attenuation maps at low resolution (0 = air, ~1 = bone); brighter = denser.


def _soft_ellipse(shape, center, axes, angle_deg: float = 0.0, value: float = 1.0) -> np.ndarray:
    canvas = np.zeros(shape, np.float32)
    cv2.ellipse(canvas, (round(center[0] * 16), round(center[1] * 16)),
                (max(1, round(axes[0] * 16)), max(1, round(axes[1] * 16))), angle_deg, 0, 360,
                value, -1, cv2.LINE_8, 4)
    return canvas


def _blob(shape, center, sigma: float) -> np.ndarray:
    """An isotropic Gaussian bump with peak 1 (opacities are soft-edged)."""
    ys = np.arange(shape[0], dtype=np.float32)[:, None] - center[1]
    xs = np.arange(shape[1], dtype=np.float32)[None, :] - center[0]
    return np.exp(-(xs * xs + ys * ys) / (2.0 * sigma * sigma))


def _lungs(shape, cx, cy, u, rng) -> list[tuple[np.ndarray, float]]:
    """Soft masks of the patient's right (image left) and left lung, with each lung's lateral x."""
    out = []
    for side in (-1, 1):
        lx = cx + side * u * rng.uniform(0.17, 0.21)
        ly = cy - u * rng.uniform(0.02, 0.06)
        ax, ay = u * rng.uniform(0.12, 0.15), u * rng.uniform(0.25, 0.3)
        mask = cv2.GaussianBlur(_soft_ellipse(shape, (lx, ly), (ax, ay), side * rng.uniform(2, 8)),
                                (0, 0), 0.015 * u)
        out.append((mask, lx + side * ax))
    return out


def render_xray(label: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Renders one synthetic frontal chest X-ray of class `label` (0/1/2, see labels.py).

    Args:
      label: 0 = NORMAL, 1 = COVID19, 2 = PNEUMONIA.
      size: (height, width) of the returned image.
      rng: the image's own generator (all randomness comes from it).

    Returns:
      uint8 array of shape `size`, grayscale.
    """
    if label not in range(labels.NUM_CLASSES):
        raise ValueError(f"label={label!r}; allowed: 0..{labels.NUM_CLASSES - 1} (see labels.CLASS_NAMES).")
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"size={size!r}: height and width must be >= 1.")
    scale = _RENDER_SHORT / min(height, width)
    shape = (max(8, round(height * scale)), max(8, round(width * scale)))
    h, w = shape
    u = min(h, w) * rng.uniform(0.85, 1.05)  # body size
    cx = w / 2 + rng.uniform(-0.06, 0.06) * u
    cy = h / 2 + rng.uniform(-0.05, 0.07) * u

    att = np.full(shape, rng.uniform(0.0, 0.08), np.float32)
    body = _soft_ellipse(shape, (cx, cy + 0.12 * u), (0.5 * u, 0.7 * u), 0, rng.uniform(0.45, 0.55))
    body += _soft_ellipse(shape, (cx, cy - 0.55 * u), (0.1 * u, 0.25 * u), 0, 0.12)  # neck
    att += cv2.GaussianBlur(body, (0, 0), 0.03 * u)
    lungs = _lungs(shape, cx, cy, u, rng)
    lung_mask = lungs[0][0] + lungs[1][0]
    att -= rng.uniform(0.32, 0.4) * lung_mask  # air in the lungs is dark
    bones = np.zeros(shape, np.float32)
    for side in (-1, 1):  # rib arcs: a class-free texture across both lungs
        for k in range(int(rng.integers(8, 11))):
            y = cy - 0.34 * u + k * u * rng.uniform(0.065, 0.075)
            cv2.ellipse(bones, (round(cx * 16), round(y * 16)), (round(0.36 * u * 16), round(0.09 * u * 16)),
                        side * rng.uniform(8, 16), 180 if side < 0 else 270, 270 if side < 0 else 360,
                        0.5, max(1, round(u / 70)), cv2.LINE_8, 4)
        cv2.line(bones, (round(cx * 16), round((cy - 0.38 * u) * 16)),  # clavicle
                 (round((cx + side * 0.36 * u) * 16), round((cy - 0.45 * u) * 16)),
                 1.0, max(1, round(u / 35)), cv2.LINE_8, 4)
    att += 0.2 * cv2.GaussianBlur(bones, (0, 0), 0.008 * u)
    centre = _soft_ellipse(shape, (cx, cy), (0.07 * u, 0.75 * u), 0, 0.25)  # spine + mediastinum
    heart_x = cx + u * rng.uniform(0.05, 0.1)
    centre += _soft_ellipse(shape, (heart_x, cy + 0.17 * u), (u * rng.uniform(0.14, 0.18), 0.14 * u),
                            rng.uniform(-25, -10), 0.22)
    dome_y = cy + 0.34 * u + rng.uniform(-0.03, 0.03) * u  # diaphragm and abdomen below the lungs
    centre += _soft_ellipse(shape, (cx, dome_y + 0.35 * u), (0.48 * u, 0.4 * u), 0, 0.3)
    att += cv2.GaussianBlur(centre, (0, 0), 0.025 * u)
    vessels = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 0.01 * u)
    att += 0.05 * vessels * lung_mask

    att += _pathology(label, shape, lungs, cx, cy, u, rng)
    att = cv2.GaussianBlur(att, (0, 0), 0.006 * u)

    contrast, brightness, gamma = rng.uniform(0.8, 1.15), rng.uniform(-0.06, 0.08), rng.uniform(0.8, 1.25)
    img = np.clip(att * contrast + brightness, 0.0, 1.0) ** gamma
    small = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    marker_x = rng.choice([0.06, 0.86]) * w  # lead side marker, class-free
    cv2.putText(small, "L" if rng.random() < 0.5 else "R", (round(marker_x), round(0.12 * h)),
                cv2.FONT_HERSHEY_SIMPLEX, u / 250, 230, max(1, round(u / 100)), cv2.LINE_AA)
    full = cv2.resize(small, (width, height), interpolation=cv2.INTER_AREA if scale > 1 else cv2.INTER_LINEAR)
    return _add_grain(full, int(rng.integers(2, 9)), rng)


def _add_grain(image: np.ndarray, amplitude: int, rng: np.random.Generator) -> np.ndarray:
    """Adds +-amplitude detector grain at half resolution (saturating): cheap even at 2000 px."""
    height, width = image.shape
    half = rng.integers(0, 2 * amplitude + 1, ((height + 1) // 2, (width + 1) // 2), dtype=np.uint8)
    grain = cv2.resize(half, (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.subtract(cv2.add(image, grain), amplitude)  # image is single-channel


def _pathology(label: int, shape, lungs, cx, cy, u, rng) -> np.ndarray:
    """The class signal: extra attenuation inside the lungs (zero for NORMAL)."""
    extra = np.zeros(shape, np.float32)
    name = labels.CLASS_NAMES[label]
    if name == "COVID19":
        for mask, lateral_x in lungs:  # bilateral, peripheral, lower-zone ground glass
            side = 1 if lateral_x > cx else -1
            haze = np.zeros(shape, np.float32)
            for _ in range(int(rng.integers(3, 6))):
                bx = lateral_x - side * u * rng.uniform(0.02, 0.09)
                by = cy + u * rng.uniform(-0.12, 0.2)
                haze += rng.uniform(0.6, 1.0) * _blob(shape, (bx, by), u * rng.uniform(0.05, 0.08))
            grain = rng.standard_normal(shape).astype(np.float32)
            texture = 1.0 + 0.35 * cv2.GaussianBlur(grain, (0, 0), 1.0)
            extra += rng.uniform(0.18, 0.28) * np.minimum(haze, 1.0) * texture * mask
    elif name == "PNEUMONIA":
        mask, lateral_x = lungs[int(rng.integers(0, 2))]  # one side only
        ys = np.arange(shape[0], dtype=np.float32)[:, None]
        split_y = cy + u * rng.uniform(-0.08, 0.04)  # the fissure bounding the lobe
        lower = rng.random() < 0.6
        lobe = 1.0 / (1.0 + np.exp(-(ys - split_y) / (0.012 * u) * (1 if lower else -1)))
        dense = rng.uniform(0.32, 0.45) * lobe * mask
        bronchi = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 0.8)
        extra += dense * (1.0 - 0.12 * np.clip(bronchi, 0, None))  # a few air bronchograms
    return extra


# ---------------------------------------------------------------------------------------------
# Files.


def _encode(gray: np.ndarray, image_format: str, mode: str, rng: np.random.Generator) -> bytes:
    """Encodes a uint8 gray image as the file a scanner or archive would have produced."""
    if mode == "RGB":
        image = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    elif mode == "I;16":
        # 12-bit detector values in a 16-bit PNG: readers must scale by the actual range.
        image = gray.astype(np.uint16) * 16 + rng.integers(0, 16, gray.shape, dtype=np.uint16)
    else:
        image = gray
    if image_format == "jpeg":
        params = [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(85, 96))]
        ok, buf = cv2.imencode(".jpg", image, params)
    else:
        # A single SUB filter + fast deflate: about 2x faster than libpng's adaptive default.
        params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
        ok, buf = cv2.imencode(".png", image, params)
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {image.shape} {mode} image as {image_format}.")
    return buf.tobytes()


def _image_size(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[int, int]:
    """(height, width): width uniform in [min_size, max_size], aspect h/w in [0.8, 1.25]."""
    width = int(rng.integers(spec.min_size, spec.max_size + 1))
    height = int(np.clip(round(width * rng.uniform(0.8, 1.25)), spec.min_size, spec.max_size))
    return height, width


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one OpenCV thread per process: N workers use N cores, not N^2 threads


def _write_one(task: tuple) -> tuple[str, str, str, str, str, int]:
    """Renders, encodes and atomically writes one image (runs in the caller or a pool worker)."""
    spec, out_dir, split, name, index, number = task
    rng = np.random.default_rng([spec.seed, _SPLIT_KEYS[split], labels.LABEL_MAP[name], index])
    usable = [f for f in spec.formats if any(_compatible(f, m) for m in spec.modes)]
    image_format = usable[int(rng.integers(0, len(usable)))]
    modes = [m for m in spec.modes if _compatible(image_format, m)]
    mode = modes[int(rng.integers(0, len(modes)))]
    gray = render_xray(labels.LABEL_MAP[name], _image_size(spec, rng), rng)
    data = _encode(gray, image_format, mode, rng)
    path = Path(out_dir) / split / name / f"{name}({number}){_EXTENSIONS[image_format]}"
    files.write_atomic(path, data)  # never a half-written image under a real name
    return split, name, str(path), image_format, mode, len(data)


def _existing_files(out_dir: Path) -> list[Path]:
    return [p for split in GENERATED_SPLITS if (out_dir / split).is_dir()
            for p in (out_dir / split).rglob("*") if p.is_file()]


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuses an out_dir that already holds images unless `overwrite`, which clears them."""
    existing = _existing_files(out)
    if existing and not overwrite:
        raise FileExistsError(
            f"{str(out)!r} already holds {len(existing)} files under train/val/test "
            f"(e.g. {existing[0]}). Pass overwrite=True (--overwrite) to replace them, "
            "or choose another directory."
        )
    for split in GENERATED_SPLITS:
        if overwrite and (out / split).is_dir():
            shutil.rmtree(out / split)


def _plan_tasks(spec: SyntheticSpec, out: Path) -> list[tuple]:
    """One (spec, out, split, class, index, file number) task per image, class folders made."""
    tasks = []
    for split in sorted(spec.counts, key=_SPLIT_KEYS.get):
        for name in KAGGLE_CLASSES:
            (out / split / name).mkdir(parents=True, exist_ok=True)
            # Kaggle numbers test files after train files: COVID19(460).jpg is the first test COVID.
            first = sum(spec.counts[s].get(name, 0) for s in spec.counts
                        if _SPLIT_KEYS[s] < _SPLIT_KEYS[split])
            tasks += [(spec, str(out), split, name, i, first + i)
                      for i in range(spec.counts[split].get(name, 0))]
    return tasks


def generate_dataset(
    out_dir: str | os.PathLike,
    counts: Mapping[str, Mapping[str, int]] | None = None,
    *,
    min_size: int = 256,
    max_size: int = 512,
    formats: tuple[str, ...] = ("jpeg", "png"),
    modes: tuple[str, ...] = ("L", "RGB"),
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    num_workers: int = 1,
) -> dict[str, Any]:
    """Writes a synthetic chest X-ray dataset in the Kaggle layout.

    Args:
      out_dir: becomes the converter's --data_dir: `out_dir/{split}/{CLASS}/{CLASS}(n).jpg|png`.
      counts: {split: {class: n}}; splits from train/val/test, classes case-insensitive. None ->
        KAGGLE_COUNTS (6,432 images).
      min_size, max_size: range of each image side in pixels (aspect ratio varies).
      formats: file formats drawn uniformly per image ("jpeg", "png").
      modes: saved pixel modes drawn uniformly per image among those the format supports:
        "L" gray, "RGB" gray stored as 3 channels, "I;16" 16-bit gray (PNG only).
      seed: same seed and arguments -> byte-identical files.
      overwrite: delete existing out_dir/{train,val,test} first; otherwise refuse to write into them.
      progress: called as progress(done, total) after each image.
      num_workers: processes (0 = all cores). Files are identical for any number of workers.

    Returns:
      {"out_dir", "counts", "num_images", "num_bytes", "paths" ({split: {class: [path, ...]}}),
       "formats" / "modes" (images per format / mode), "seconds", "images_per_second"}.

    Raises:
      ValueError: invalid arguments (message names the value and the allowed range).
      FileExistsError: out_dir already holds images and overwrite is False.
    """
    spec = SyntheticSpec(KAGGLE_COUNTS if counts is None else counts, min_size, max_size,
                         tuple(formats), tuple(modes), seed)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers={num_workers!r} must be an integer >= 0 (0 = all cores).")
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    tasks = _plan_tasks(spec, out)
    total, num_bytes = len(tasks), 0
    paths = {split: {name: [] for name in KAGGLE_CLASSES} for split in spec.counts}
    per_format = {f: 0 for f in spec.formats}
    per_mode = {m: 0 for m in spec.modes}
    start = time.perf_counter()
    workers = min(num_workers or files.usable_cpus(), max(1, total // 8))
    with contextlib.ExitStack() as stack:
        if workers > 1:
            # spawn, not fork: the caller may have TensorFlow loaded, whose threads do not survive fork.
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers, _init_worker))
            results = pool.imap(_write_one, tasks, chunksize=4)
        else:
            results = map(_write_one, tasks)
        for done, (split, name, path, image_format, mode, size) in enumerate(results, 1):
            paths[split][name].append(path)
            per_format[image_format] += 1
            per_mode[mode] += 1
            num_bytes += size
            if progress is not None:
                progress(done, total)
    seconds = time.perf_counter() - start
    return {
        "out_dir": str(out),
        "counts": {s: dict(c) for s, c in spec.counts.items()},
        "num_images": total,
        "num_bytes": num_bytes,
        "paths": paths,
        "formats": per_format,
        "modes": per_mode,
        "seconds": seconds,
        "images_per_second": total / seconds if seconds > 0 else float("inf"),
    }
