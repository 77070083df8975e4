"""`python -m xray_tfdata.benchmark`: throughput of the converter, the input pipeline, training.

  --mode=convert  build_records images/s at --workers vs the tutorial's sequential cv2 loop
  --mode=input    keras image_dataset_from_directory vs the tutorial loader vs ours (+ ablation)
  --mode=train    training images/s fed by records vs synthetic batches; precisions; replicas
  --mode=all      all three, in that order

Data: --data_dir (an existing Kaggle-layout folder) or --synthetic=tiny|small|kaggle, generated
once into --work_dir and reused. Every run prints tables and appends JSON lines to --output with
the machine, library versions, all settings and, per measurement, the median and spread over
--repeats. Each variant runs in its own process (peak memory is per variant), unless --noisolate.

Example (the README's numbers):
  python -m xray_tfdata.benchmark --mode=all --synthetic=kaggle --repeats=3 --plot
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from xray_tfdata import cli
from xray_tfdata.benchmarking import isolate, suite

FLAGS = flags.FLAGS
cli.define_flags(suite.BenchConfig)


def config_from_flags() -> suite.BenchConfig:
    """Validates the flags (cheap checks first, no heavy work) into a BenchConfig."""
    if FLAGS.data_dir and FLAGS["synthetic"].present:
        raise app.UsageError(f"Pass either --data_dir={FLAGS.data_dir} or "
                             f"--synthetic={FLAGS.synthetic}, not both.")
    config = cli.settings_from_flags(suite.BenchConfig)
    if "train" in config.modes:
        from xray_tfdata import models  # pylint: disable=import-outside-toplevel  (imports TF)

        if config.model not in models.MODEL_NAMES:
            raise app.UsageError(f"--model={config.model!r} is invalid: allowed "
                                 f"{', '.join(models.MODEL_NAMES)}.")
    if config.repeats < 3:
        logging.warning("--repeats=%d: fewer than 3 repeats give no meaningful spread.",
                        config.repeats)
    return config


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    config = config_from_flags()
    try:
        suite.run(config)
    except isolate.BenchmarkError as err:
        cli.fail(f"Benchmark incomplete: {err}")


def run_with_mode(mode: str) -> None:
    """Entry for the thin scripts in benchmarks/: this tool with --mode fixed, other flags passed."""
    if any(arg.lstrip("-").startswith("mode") for arg in sys.argv[1:]):
        raise SystemExit(f"{sys.argv[0]} always runs --mode={mode}; for another mode run "
                         "python -m xray_tfdata.benchmark --mode=...")  # before absl starts
    sys.argv = [sys.argv[0], f"--mode={mode}", *sys.argv[1:]]
    cli.run(main)


if __name__ == "__main__":
    cli.run(main)
