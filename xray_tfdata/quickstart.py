"""The main job, end to end on built-in synthetic data: `python -m xray_tfdata.quickstart`.

generate synthetic Kaggle-layout X-rays -> build records -> train the seed CNN -> evaluate on test
-> classical classifiers on CNN embeddings -> predict on a few files with the exported SavedModel.

Each stage after the first runs as the same `python -m xray_tfdata.<entry>` command a user would
type (printed before it runs), so the quickstart doubles as a worked example of the real CLI.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from absl import app

from xray_tfdata import cli, errors
from xray_tfdata.errors import ConfigError
from xray_tfdata.records import synthetic
from xray_tfdata.settings import setting



@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
    """The quickstart's settings (its flags): how much synthetic data, how long to train."""

    workdir: str = setting("workspace/quickstart", "Everything the run writes goes here.")
    per_class_train: int = setting(120, "Synthetic training images per class.")
    per_class_test: int = setting(40, "Synthetic test images per class.")
    image_size: int = setting(64, "Side of the square images written to the records.")
    epochs: int = setting(12, "Training epochs for the seed CNN.")
    global_batch_size: int = setting(16, "Global batch size for training.")
    seed: int = setting(0, "Seed for data generation, splits and training.")
    overwrite: bool = setting(True, "Start from scratch (remove a previous quickstart's records "
                              "and model).")

    def __post_init__(self) -> None:
        for name in ("per_class_test", "epochs", "global_batch_size"):
            errors.positive_int(name, getattr(self, name))
        if self.per_class_train < 20:
            raise ConfigError("per_class_train", self.per_class_train, "at least 20",
                              "Fewer are too few to learn from and to carve a validation split.")
        if self.image_size < 32:
            raise ConfigError("image_size", self.image_size, "at least 32 (the seed CNN's "
                              "smallest input)")


cli.define_flags(QuickstartConfig)


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
        cli.fail(f"step '{step}' failed with exit code {result.returncode}.")
    _timings.append((step, time.perf_counter() - start))


def _fmt(value: object) -> str:
    if isinstance(value, dict):  # {"value": v, "ci95": [lo, hi]} or similar
        value = value.get("value", value.get("point"))
    return f"{value:.3f}" if isinstance(value, (int, float)) else str(value)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = cli.settings_from_flags(QuickstartConfig)
    work = Path(config.workdir)
    data_dir, records_dir, model_dir = work / "data", work / "records", work / "model"
    overwrite = ["--overwrite"] if config.overwrite else []
    start = time.perf_counter()

    print(f"[1/{STEPS}] synthetic X-rays -> {data_dir}", flush=True)
    t0 = time.perf_counter()
    info = synthetic.generate_dataset(
        data_dir,
        synthetic.small_counts(config.per_class_train, config.per_class_test),
        seed=config.seed,
        overwrite=config.overwrite,
    )
    print(f"wrote {info['num_images']} images")
    _timings.append(("synthetic data", time.perf_counter() - t0))

    _run("build records", [
        "xray_tfdata.build_records", f"--data_dir={data_dir}", f"--output_dir={records_dir}",
        f"--image_size={config.image_size}", f"--seed={config.seed}",
        "--augment=COVID19:gamma0.55,unsharp3", *overwrite,
    ])
    _run("train seed CNN", [
        "xray_tfdata.train", f"--records_dir={records_dir}", f"--model_dir={model_dir}",
        "--model=seed_cnn", f"--epochs={config.epochs}",
        f"--global_batch_size={config.global_batch_size}", f"--seed={config.seed}",
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
    samples = sorted((data_dir / "test").glob("*/*"))[:: max(1, config.per_class_test)][:3]
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
