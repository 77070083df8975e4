"""The main job, end to end on built-in synthetic data: `python -m xray_tfdata.quickstart`.

generate synthetic Kaggle-layout X-rays -> build records -> train the seed CNN -> evaluate on test
-> classical classifiers on CNN embeddings -> predict on a few files with the exported SavedModel.

Each stage after the first runs as the same `python -m xray_tfdata.<entry>` command a user would
type (printed before it runs), so the quickstart doubles as a worked example of the real CLI.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

from xray_tfdata import cli
from xray_tfdata.records import synthetic

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "workspace/quickstart", "Everything the run writes goes here.")
flags.DEFINE_integer("per_class_train", 120, "Synthetic training images per class.")
flags.DEFINE_integer("per_class_test", 40, "Synthetic test images per class.")
flags.DEFINE_integer("image_size", 64, "Side of the square images written to the records.")
flags.DEFINE_integer("epochs", 12, "Training epochs for the seed CNN.")
flags.DEFINE_integer("global_batch_size", 16, "Global batch size for training.")
flags.DEFINE_integer("seed", 0, "Seed for data generation, splits and training.")
flags.DEFINE_bool("overwrite", True, "Start from scratch (remove a previous quickstart's records and model).")


STEPS = 6  # synthetic data + the five commands below
_timings: list[tuple[str, float]] = []


def _run(step: str, args: list[str]) -> None:
    """Runs `python -m <args>` as a user would type it (printed first); records its time."""
    cmd = [sys.executable, "-m", *args]
    print(f"[{len(_timings) + 1}/{STEPS}] {step}: $ {shlex.join(['python', '-m', *args])}",
          flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise SystemExit(f"quickstart: step '{step}' failed with exit code {result.returncode}.")
    _timings.append((step, time.perf_counter() - start))


def _fmt(value: object) -> str:
    if isinstance(value, dict):  # {"value": v, "ci95": [lo, hi]} or similar
        value = value.get("value", value.get("point"))
    return f"{value:.3f}" if isinstance(value, (int, float)) else str(value)


def _validate() -> None:
    for name in ("per_class_train", "per_class_test", "image_size", "epochs", "global_batch_size"):
        value = getattr(FLAGS, name)
        if value < 1:
            raise app.UsageError(f"--{name}={value} must be a positive integer.")
    if FLAGS.per_class_train < 20:
        raise app.UsageError(
            f"--per_class_train={FLAGS.per_class_train} is too few to learn from and to carve a "
            "validation split; use at least 20."
        )
    if FLAGS.image_size < 32:
        raise app.UsageError(f"--image_size={FLAGS.image_size}: the seed CNN needs at least 32.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    _validate()
    work = Path(FLAGS.workdir)
    data_dir, records_dir, model_dir = work / "data", work / "records", work / "model"
    overwrite = ["--overwrite"] if FLAGS.overwrite else []
    start = time.perf_counter()

    print(f"[1/{STEPS}] synthetic X-rays -> {data_dir}", flush=True)
    t0 = time.perf_counter()
    info = synthetic.generate_dataset(
        data_dir,
        synthetic.small_counts(FLAGS.per_class_train, FLAGS.per_class_test),
        seed=FLAGS.seed,
        overwrite=FLAGS.overwrite,
    )
    print(f"wrote {info['num_images']} images")
    _timings.append(("synthetic data", time.perf_counter() - t0))

    _run("build records", [
        "xray_tfdata.build_records", f"--data_dir={data_dir}", f"--output_dir={records_dir}",
        f"--image_size={FLAGS.image_size}", f"--seed={FLAGS.seed}",
        "--augment=COVID19:gamma0.55,unsharp3", *overwrite,
    ])
    _run("train seed CNN", [
        "xray_tfdata.train", f"--records_dir={records_dir}", f"--model_dir={model_dir}",
        "--model=seed_cnn", f"--epochs={FLAGS.epochs}",
        f"--global_batch_size={FLAGS.global_batch_size}", f"--seed={FLAGS.seed}",
        "--class_weights=balanced", "--deterministic", *overwrite,
    ])
    best = model_dir / "best.keras"
    _run("evaluate on test", [
        "xray_tfdata.evaluate", f"--model_path={best}", f"--records_dir={records_dir}",
        "--split=test", f"--output_dir={model_dir / 'eval' / 'test'}",
    ])
    _run("classical classifiers on CNN embeddings", [
        "xray_tfdata.classical", f"--model_path={best}", f"--records_dir={records_dir}",
        f"--output_dir={model_dir / 'classical'}",
    ])
    samples = sorted((data_dir / "test").glob("*/*"))[:: max(1, FLAGS.per_class_test)][:3]
    _run("predict with the SavedModel export", [
        "xray_tfdata.predict", f"--model_path={model_dir / 'export'}", *map(str, samples),
    ])

    metrics_path = model_dir / "eval" / "test" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    print(f"\nquickstart finished in {time.perf_counter() - start:.0f} s ("
          + ", ".join(f"{step} {seconds:.0f} s" for step, seconds in _timings) + ")")
    if metrics:
        print(f"test accuracy {_fmt(metrics.get('accuracy'))}, macro-F1 "
              f"{_fmt(metrics.get('macro_f1'))} (chance is about 0.33)")
    print(f"Everything is under {work}: data/ (synthetic X-rays), records/ (shards + manifest), "
          f"model/ ({best.name}, export/, eval/test/, classical/, checkpoints/, history.csv, "
          f"summary.json). TensorBoard: tensorboard --logdir {model_dir / 'logs'}")


if __name__ == "__main__":
    cli.run(main)
