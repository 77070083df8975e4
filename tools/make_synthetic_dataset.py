"""Writes a synthetic chest X-ray dataset in the Kaggle layout (no download, no credentials).

  python tools/make_synthetic_dataset.py                              # small: 50/15 per class, 256-512 px
  python tools/make_synthetic_dataset.py --preset=kaggle --overwrite  # 6,432 images, 1000-2000 px
  python -m xray_tfdata.build_records --data_dir=workspace/synthetic --output_dir=workspace/records

The images and their class patterns are described in xray_tfdata/synthetic.py.
"""

from __future__ import annotations

import sys
import time

from absl import app, flags

from xray_tfdata.records import synthetic

PRESETS = ("small", "kaggle")
# Per preset: (per_class_train, per_class_test) for "small"; image side range in pixels.
_SMALL_PER_CLASS = (50, 15)
_PRESET_SIZES = {"small": (256, 512), "kaggle": (1000, 2000)}

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines this script's flags; called only when run as a script, so tests can import the
    module next to other entry points that define --output_dir too."""
    flags.DEFINE_string("output_dir", "workspace/synthetic",
                        "Dataset root; becomes build_records' --data_dir.")
    flags.DEFINE_enum("preset", "small", PRESETS,
                      "small: --per_class_train/--per_class_test images of every class. kaggle: the Kaggle "
                      "set's 6,432 images with its class imbalance (train 460/1266/3418, test 116/317/855 "
                      "COVID19/NORMAL/PNEUMONIA), full-size by default.")
    flags.DEFINE_integer("per_class_train", _SMALL_PER_CLASS[0], "Train images per class (preset small).")
    flags.DEFINE_integer("per_class_test", _SMALL_PER_CLASS[1], "Test images per class (preset small).")
    flags.DEFINE_integer("min_size", None, "Smallest image side in px (default: 256 small, 1000 kaggle).")
    flags.DEFINE_integer("max_size", None, "Largest image side in px (default: 512 small, 2000 kaggle).")
    flags.DEFINE_list("formats", ["jpeg", "png"], f"File formats, drawn per image from {synthetic.FORMATS}.")
    flags.DEFINE_list("modes", ["L", "RGB"], f"Saved pixel modes, drawn per image from {synthetic.MODES} "
                      "('I;16' = 16-bit gray PNG).")
    flags.DEFINE_integer("seed", 0, "Same seed and flags -> byte-identical files.")
    flags.DEFINE_integer("num_workers", 0, "Processes (0 = all cores); the files do not depend on it.")
    flags.DEFINE_bool("overwrite", False, "Delete existing train/val/test folders under --output_dir first.")


def resolve_counts(preset: str, per_class_train: int, per_class_test: int,
                   per_class_given: bool = False) -> dict[str, dict[str, int]]:
    """The {split: {class: n}} a preset asks for.

    Raises:
      ValueError: unknown preset, negative counts, or per-class counts given with preset kaggle.
    """
    if preset not in PRESETS:
        raise ValueError(f"--preset={preset!r}; allowed: {', '.join(PRESETS)}.")
    if preset == "kaggle":
        if per_class_given:
            raise ValueError("--per_class_train/--per_class_test apply to --preset=small only; "
                             "--preset=kaggle uses the Kaggle set's own counts. Drop one of them.")
        return {split: dict(c) for split, c in synthetic.KAGGLE_COUNTS.items()}
    for name, value in (("per_class_train", per_class_train), ("per_class_test", per_class_test)):
        if value < 0:
            raise ValueError(f"--{name}={value} must be >= 0.")
    if per_class_train + per_class_test == 0:
        raise ValueError("--per_class_train and --per_class_test are both 0: nothing to generate. "
                         "Set at least one to a positive number.")
    return synthetic.small_counts(per_class_train, per_class_test)


def resolve_sizes(preset: str, min_size: int | None, max_size: int | None) -> tuple[int, int]:
    """Preset default side range, with either end overridden by a flag."""
    lo, hi = _PRESET_SIZES[preset]
    lo = lo if min_size is None else min_size
    hi = hi if max_size is None else max_size
    if min_size is not None and max_size is None and lo > hi:
        hi = lo  # --min_size alone above the preset's max: a fixed size, not an error
    if max_size is not None and min_size is None and lo > hi:
        lo = hi
    return lo, hi


class ProgressLine:
    """One updating stderr line: done/total, images/s, ETA (at most ~4 updates a second)."""

    def __init__(self, label: str, stream=sys.stderr) -> None:
        self.label, self.stream = label, stream
        self.start = self.last = time.perf_counter()
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        # Not a terminal (CI log, pipe): one line per ~10 s instead of carriage-return updates.
        if done < total and now - self.last < (0.25 if self.tty else 10.0):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (total - done) / rate if rate > 0 else 0.0
        line = (f"{self.label}: {done}/{total} images ({100 * done / max(total, 1):.0f}%)  "
                f"{rate:.1f} img/s  ETA {int(eta) // 60}m{int(eta) % 60:02d}s")
        end = "\n" if done >= total or not self.tty else ""
        print(("\r" if self.tty else "") + line, end=end, file=self.stream, flush=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    given = FLAGS["per_class_train"].present or FLAGS["per_class_test"].present
    try:
        counts = resolve_counts(FLAGS.preset, FLAGS.per_class_train, FLAGS.per_class_test, given)
        min_size, max_size = resolve_sizes(FLAGS.preset, FLAGS.min_size, FLAGS.max_size)
        synthetic.SyntheticSpec(counts, min_size, max_size, tuple(FLAGS.formats),
                                tuple(FLAGS.modes), FLAGS.seed)  # validate before any work
        if FLAGS.num_workers < 0:
            raise ValueError(f"--num_workers={FLAGS.num_workers} must be >= 0 (0 = all cores).")
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    try:
        info = synthetic.generate_dataset(
            FLAGS.output_dir, counts, min_size=min_size, max_size=max_size,
            formats=tuple(FLAGS.formats), modes=tuple(FLAGS.modes), seed=FLAGS.seed,
            overwrite=FLAGS.overwrite, progress=ProgressLine("synthetic"), num_workers=FLAGS.num_workers,
        )
    except FileExistsError as err:
        raise app.UsageError(str(err)) from err
    per_split = ", ".join(f"{split} {sum(c.values())}" for split, c in info["counts"].items())
    print(f"Wrote {info['num_images']} images ({per_split}; {info['num_bytes'] / 1e6:.1f} MB, "
          f"{min_size}-{max_size} px, formats {info['formats']}, modes {info['modes']}) to "
          f"{info['out_dir']} in {info['seconds']:.1f} s ({info['images_per_second']:.1f} img/s).")
    print(f"Next: python -m xray_tfdata.build_records --data_dir={info['out_dir']} "
          "--output_dir=workspace/records")


if __name__ == "__main__":
    define_flags()
    app.run(main)
