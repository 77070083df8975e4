"""xray_tfdata: chest X-ray folders -> sharded TFRecords -> tf.data -> distributed training.

The packages follow the data's journey (imports run one way, down this list):
  commands (build_records, train, evaluate, classical, predict, benchmark, quickstart, ...)
  training/    config, loop (setup, steps, epochs, finish), finetune, checkpointing, distribute
  evaluation/  inference, metrics, evaluator, calibration, shortcut, reference, gradcam,
               gradcam_report, classical
  serving/     export, predict, web/ (the Django app)
  inputs/      decode, online_augment, device_augment, sampling, service, pipeline
  records/     sources, labels_csv, collect, patients (what to read) -> image_format, image_io,
               dicom, resize (reading it) -> offline_augment, dedupe -> shard_plan -> decode_pass,
               shard_writer, conversion_state, conversion_config, convert (writing it);
               features + manifest (the on-disk format); synthetic
  shared:      labels, layer_names, files, errors, console, settings, cli, models
"""

__version__ = "0.1.0"

# Before anything imports TensorFlow (every `python -m xray_tfdata.<command>` runs this first):
# TensorFlow's C++ start-up lines stay hidden unless XRAY_TFDATA_VERBOSE=1 (see console.py).
import sys as _sys  # noqa: E402

from xray_tfdata import console as _console  # noqa: E402

_console.quiet_native_logs()
if _sys.argv[:1] == ["-m"]:  # being started as `python -m xray_tfdata.<command>`
    _console.filter_native_stderr()
