"""xray_tfdata: chest X-ray folders -> sharded TFRecords -> tf.data -> distributed training.

The packages follow the data's journey (imports run one way, down this list):
  commands (build_records, train, evaluate, classical, predict, benchmark, quickstart, ...)
  training/    config, loop, steps, checkpointing, distribute
  evaluation/  metrics, evaluator, shortcut, classical
  serving/     export, predict
  inputs/      decode, online_augment, pipeline
  records/     sources, image_io, offline_augment, dedupe, shard_plan, shard_writer, convert,
               features + manifest (the on-disk format), synthetic
  shared:      labels, files, errors, console, cli, models
"""

__version__ = "0.1.0"

# Before anything imports TensorFlow (every `python -m xray_tfdata.<command>` runs this first):
# TensorFlow's C++ start-up lines stay hidden unless XRAY_TFDATA_VERBOSE=1 (see console.py).
import sys as _sys  # noqa: E402

from xray_tfdata import console as _console  # noqa: E402

_console.quiet_native_logs()
if _sys.argv[:1] == ["-m"]:  # being started as `python -m xray_tfdata.<command>`
    _console.filter_native_stderr()
