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
from xray_tfdata.benchmarking import datasets, isolate, suite

FLAGS = flags.FLAGS
_DEFAULTS = suite.BenchConfig(mode="all")

flags.DEFINE_enum("mode", "all", list(suite.MODES), "What to measure.")
flags.DEFINE_string("data_dir", "", "Existing Kaggle-layout folder "
                    "(<data_dir>/{train,test}/{COVID19,NORMAL,PNEUMONIA}/*). Empty: --synthetic.")
flags.DEFINE_enum("synthetic", _DEFAULTS.synthetic, list(datasets.PRESETS),
                  "Generated dataset when --data_dir is empty: tiny (smoke test, small images), "
                  "small (360 full-size), kaggle (6,432 full-size at the Kaggle class counts).")
flags.DEFINE_string("work_dir", _DEFAULTS.work_dir,
                    "Cache for generated sources, records, subsets and per-variant logs.")
flags.DEFINE_string("output", _DEFAULTS.output, "JSON-lines file the results are appended to.")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size,
                     "Batch size (input mode: batch; train mode: per-replica batch).")
flags.DEFINE_integer("image_size", _DEFAULTS.image_size, "Square image side of records/batches.")
flags.DEFINE_integer("channels", _DEFAULTS.channels, "Train mode image channels (1 or 3).")
flags.DEFINE_string("model", _DEFAULTS.model, "Train mode model (xray_tfdata.models.MODEL_NAMES).")
flags.DEFINE_list("precision", list(_DEFAULTS.precisions),
                  "Train mode precisions: float32, mixed (float16 on GPU, bfloat16 elsewhere), "
                  "mixed_float16, mixed_bfloat16.")
flags.DEFINE_enum("strategy", _DEFAULTS.strategy, ["mirrored", "one_device"],
                  "Train mode tf.distribute strategy.")
flags.DEFINE_list("replicas", [str(r) for r in _DEFAULTS.replicas],
                  "Train mode replica counts (GPUs, or logical CPU devices without GPUs).")
flags.DEFINE_integer("steps", _DEFAULTS.steps, "Timed steps/batches per repeat.")
flags.DEFINE_integer("warmup_steps", _DEFAULTS.warmup_steps, "Untimed steps before timing.")
flags.DEFINE_integer("repeats", _DEFAULTS.repeats, "Timed repeats per variant (median, spread).")
flags.DEFINE_list("workers", [str(w) for w in _DEFAULTS.workers],
                  "Convert mode worker counts.")
flags.DEFINE_integer("convert_images", _DEFAULTS.convert_images,
                     "Convert mode: number of source images (spread over the set; 0 = all).")
flags.DEFINE_bool("ablation", _DEFAULTS.ablation,
                  "Input mode: also run ours with each optimisation switched off.")
flags.DEFINE_bool("baselines", _DEFAULTS.baselines,
                  "Input mode: also run the Keras image_dataset_from_directory and tutorial "
                  "loaders.")
flags.DEFINE_bool("host_cost", _DEFAULTS.host_cost,
                  "Input mode: host CPU per image (no model) for augmentation on host vs device, "
                  "jpeg vs raw, cached vs not, and the cores needed for 10k / 50k images/s.")
flags.DEFINE_list("augment_on", list(_DEFAULTS.augment_on),
                  "Train mode: where augmentation runs, host (tf.data) and/or device (inside the "
                  "step); each is measured real vs synthetic.")
flags.DEFINE_list("service_workers", [str(w) for w in _DEFAULTS.service_workers],
                  "Input mode: tf.data service variants with this many local worker processes "
                  "(0 = the same pipeline locally). Empty: none.")
flags.DEFINE_bool("isolate", _DEFAULTS.isolate,
                  "Run each variant in its own process (fair peak memory; needed for several "
                  "logical CPU replicas). --noisolate: in-process, for quick smoke runs.")
flags.DEFINE_bool("plot", False, "Also write a PNG chart per mode.")
flags.DEFINE_string("plot_dir", "", "Where the PNGs go (default: beside --output).")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed for shuffling and synthetic batches.")
flags.DEFINE_float("timeout", _DEFAULTS.timeout_s, "Seconds before a variant is stopped.")


# BenchConfig fields whose flag has another name.
_FIELD_TO_FLAG = {"precisions": "precision", "timeout_s": "timeout"}


def _int_list(name: str) -> tuple[int, ...]:
    values = FLAGS[name].value
    try:
        return tuple(int(v) for v in values)
    except ValueError as err:
        raise app.UsageError(f"--{name}={','.join(values)} must be a comma-separated list of "
                             f"integers, e.g. --{name}=1,2,4.") from err


def config_from_flags() -> suite.BenchConfig:
    """Validates the flags (cheap checks first, no heavy work) into a BenchConfig."""
    if FLAGS.data_dir and FLAGS["synthetic"].present:
        raise app.UsageError(f"Pass either --data_dir={FLAGS.data_dir} or "
                             f"--synthetic={FLAGS.synthetic}, not both.")
    config = cli.settings_from_flags(
        suite.BenchConfig, flag_names=_FIELD_TO_FLAG, precisions=tuple(FLAGS.precision),
        replicas=_int_list("replicas"), workers=_int_list("workers"),
        service_workers=_int_list("service_workers"), augment_on=tuple(FLAGS.augment_on))
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
        sys.exit(f"Benchmark incomplete: {err}")


def run_with_mode(mode: str) -> None:
    """Entry for the thin scripts in benchmarks/: this tool with --mode fixed, other flags passed."""
    if any(arg.lstrip("-").startswith("mode") for arg in sys.argv[1:]):
        sys.exit(f"{sys.argv[0]} always runs --mode={mode}; for another mode run "
                 "python -m xray_tfdata.benchmark --mode=...")
    sys.argv = [sys.argv[0], f"--mode={mode}", *sys.argv[1:]]
    cli.run(main)


if __name__ == "__main__":
    cli.run(main)
