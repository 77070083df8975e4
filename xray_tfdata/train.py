"""Train a classifier on TFRecords: `python -m xray_tfdata.train`.

One custom training loop for every strategy (one device, several GPUs, several hosts via TF_CONFIG,
TPU), in float32 or mixed precision. A rerun with the same --model_dir resumes from the newest
checkpoint. Writes to --model_dir: checkpoints/, logs/ (TensorBoard), history.csv, best.keras,
export/ (SavedModel taking encoded image bytes) and summary.json.

Example:
  python -m xray_tfdata.train --records_dir=workspace/records --model_dir=workspace/model \\
      --model=seed_cnn --epochs=10 --global_batch_size=32
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from absl import app, flags

from xray_tfdata import cli, models
from xray_tfdata.errors import ConfigError
from xray_tfdata.inputs.device_augment import AUGMENT_ON
from xray_tfdata.records.manifest import ManifestError
from xray_tfdata.training import config as train_config
from xray_tfdata.training import distribute

FLAGS = flags.FLAGS

flags.DEFINE_string("records_dir", "workspace/records",
                    "Records directory (with dataset_info.json).")
flags.DEFINE_string("model_dir", "workspace/model",
                    "Output: checkpoints/, logs/, history.csv, best.keras, export/, summary.json. "
                    "An existing run here is resumed unless --overwrite.")
flags.DEFINE_bool("overwrite", False, "Delete a previous run's outputs in --model_dir and start "
                  "from scratch instead of resuming.")
flags.DEFINE_enum("model", "seed_cnn", models.MODEL_NAMES, "Model architecture.")
flags.DEFINE_string("weights", None, "'imagenet' (backbones: keras.applications' notop file from "
                    "Keras' cache $KERAS_HOME/models or ~/.keras/models, downloaded there when "
                    "absent), or a local weights file (.h5 / .weights.h5): a full model's weights "
                    "or an ImageNet 'notop' backbone file.")
flags.DEFINE_float("dropout", 0.5, "Dropout rate before the output layer.")
flags.DEFINE_integer("epochs", 10, "Training epochs.")
flags.DEFINE_integer("steps_per_epoch", 0,
                     "Steps per epoch; 0 = train examples // global_batch_size.")
flags.DEFINE_integer("global_batch_size", 32,
                     "Batch size summed over all replicas; must divide by the replica count.")
flags.DEFINE_integer("image_size", None,
                     "Model input side; must match the records. Default: the records' size.")
flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate (after warmup), for a global "
                   f"batch of {train_config.LR_REFERENCE_BATCH} when --scale_lr.")
flags.DEFINE_bool("scale_lr", False, "Scale --learning_rate linearly by global_batch_size / "
                  f"{train_config.LR_REFERENCE_BATCH}.")
flags.DEFINE_enum("optimizer", "adamw", train_config.OPTIMIZERS, "adamw or sgd (with momentum).")
flags.DEFINE_float("weight_decay", 1e-4, "Decoupled weight decay.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("warmup_epochs", 1.0, "Linear warmup length before the cosine decay.")
flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing in [0, 1).")
flags.DEFINE_enum("class_weights", "balanced", train_config.CLASS_WEIGHTS,
                  "'balanced' (default) weighs the loss by n / (3 * n_class) from the train "
                  "split's counts; 'none' weighs every example alike. Off with "
                  "--sampling=balanced, which already equalises the classes.")
flags.DEFINE_enum("sampling", "natural", train_config.SAMPLING_MODES,
                  "'balanced': every class drawn with probability 1/3 into training batches "
                  "(per-class tf.data streams); 'balanced_collections': so too, and within a "
                  "class every collection holding it equally (per-(class, collection) streams); "
                  "'natural': the records' own mix.")
flags.DEFINE_list("collections", [], "Train and validate on these collections only (names of "
                  "build_records' --data_dir=name=path,...); empty = all. Filtered in the input "
                  "pipeline, no rebuild needed.")
flags.DEFINE_list("exclude_collections", [], "Train and validate on every collection but these "
                  "(leave-one-collection-out: then evaluate --collections=<it>).")
flags.DEFINE_integer("freeze_backbone_epochs", 0, "Backbones: train only the head for this many "
                     "epochs (BatchNorm in inference mode), then everything.")
flags.DEFINE_float("backbone_learning_rate_multiplier", 1.0,
                   "Backbones: the backbone's learning rate = this x --learning_rate.")
flags.DEFINE_bool("calibrate", True, "Fit a temperature on the val split at the end; best.keras "
                  "and the export then return calibrated probabilities (calibration.json).")
flags.DEFINE_enum("precision", "auto", distribute.PRECISIONS,
                  "auto = mixed_bfloat16 on TPU and on GPUs with compute capability >= 8.0, "
                  "mixed_float16 on 7.x, float32 on older GPUs and on CPU.")
flags.DEFINE_enum("jit_compile", "auto", distribute.JIT_COMPILE,
                  "XLA-compile the train step: auto = on with GPUs/TPUs, off on CPU (slower "
                  "there); true/false force it.")
flags.DEFINE_integer("steps_per_execution", 1, "Training steps per tf.function call.")
flags.DEFINE_enum("strategy", "auto", distribute.STRATEGIES,
                  "auto = MirroredStrategy over all GPUs, else the default strategy; "
                  "multi_worker reads TF_CONFIG.")
flags.DEFINE_list("devices", None, "Devices for --strategy=mirrored (default: all GPUs, else CPU).")
flags.DEFINE_string("tpu_address", "", "TPU name or grpc:// address for --strategy=tpu.")
flags.DEFINE_string("cache", "memory", "Decoded-image cache: none, memory, or a file path prefix.")
flags.DEFINE_integer("shuffle_buffer", 2048, "Shuffle buffer (examples).")
flags.DEFINE_bool("augment", True, "Online augmentation of training batches.")
flags.DEFINE_enum("augment_on", "auto", AUGMENT_ON,
                  "Where augmentation runs: host (tf.data, CPU cores), device (inside the train "
                  "step on each replica; the host only reads cached uint8), auto = device when a "
                  "GPU or TPU is present.")
flags.DEFINE_string("data_service", "", "grpc://HOST:PORT of a tf.data service dispatcher "
                    "(python -m xray_tfdata.data_service): read, decode and host augmentation of "
                    "the training input run on its workers. Validation stays local.")
flags.DEFINE_string("data_service_job", "", "Service job name prefix; every trainer process of "
                    "one multi-worker run must pass the same value (e.g. the launcher's job id). "
                    "Default: a random one (right for a single trainer process).")
flags.DEFINE_bool("deterministic", False,
                  "Reproducible runs: deterministic input order and deterministic TF ops (slower).")
flags.DEFINE_integer("seed", 0, "Seed for weights, data order and augmentation.")
flags.DEFINE_integer("patience", 0, "Early stopping: epochs without a better val macro-F1; 0=off.")
flags.DEFINE_integer("checkpoint_every", 0,
                     "Also checkpoint every N steps (0 = only at the end of each epoch).")
flags.DEFINE_integer("max_checkpoints", 3, "Checkpoints to keep.")
flags.DEFINE_integer("profile_steps", 0, "Profile this many steps (after the first call) into "
                     "logs/ for TensorBoard's Profile tab; 0 = off.")
flags.DEFINE_string("val_split", "val", "Split used for validation and best-model selection.")
flags.DEFINE_bool("export", True, "Export the best model as a serving SavedModel at the end.")

_RUN_OUTPUTS = ("checkpoints", "logs", "export", "history.csv", "best.keras", "summary.json",
                "calibration.json")


def config_from_flags() -> train_config.TrainConfig:
    """Builds the TrainConfig from the flags; a bad value becomes a UsageError naming the flag."""
    return cli.settings_from_flags(train_config.TrainConfig)


def _remove_previous_run(model_dir: Path) -> None:
    for name in _RUN_OUTPUTS:
        path = model_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}; every setting is a --flag.")
    config = config_from_flags()
    # Import after flag checks: a typo must not wait for TensorFlow's start-up.
    from xray_tfdata.training import loop

    try:
        data = loop.resolve_data(config)  # manifest, image size, splits: cheap, no TF op
        # Before any other TF op: MultiWorkerMirroredStrategy must start the collective runtime.
        strategy = distribute.make_strategy(FLAGS.strategy, devices=FLAGS.devices,
                                            tpu_address=FLAGS.tpu_address)
        distribute.per_replica_batch_size(config.global_batch_size, strategy)
    except ConfigError as err:
        raise cli.usage_error(err) from err
    except ManifestError as err:
        raise app.UsageError(str(err)) from err
    if config.weights and config.weights.lower() == models.IMAGENET:
        try:  # into Keras' cache now: offline, one clear message instead of a traceback later
            models.fetch_imagenet(config.model)
        except models.ImageNetWeightsUnavailable as err:
            sys.exit(f"xray_tfdata.train: error: --weights=imagenet: {err}")
    if config.deterministic:
        # Process-wide, so it is set here at the entry point, not in the library: the same seed
        # then gives the same weights bit for bit (thread-order reductions otherwise differ).
        import tensorflow as tf  # noqa: PLC0415

        tf.config.experimental.enable_op_determinism()
    if FLAGS.overwrite and distribute.is_chief(strategy):
        _remove_previous_run(Path(config.model_dir))

    summary = loop.train(config, strategy, data=data)
    if not distribute.is_chief(strategy):
        return
    paths = summary["paths"]
    print(f"Training {summary['status']}: {summary['epochs_completed']} epoch(s), "
          f"{summary['steps_completed']} steps, best val macro-F1 "
          f"{summary['best']['val_macro_f1']:.4f} (epoch {summary['best']['epoch']}), "
          f"{summary['images_per_sec'] or 0:.0f} images/s.")
    print(f"Wrote {paths['best_model']}, export/, history.csv, summary.json, checkpoints/ and "
          f"logs/ (tensorboard --logdir {paths['logs']}) in {config.model_dir}.")
    cal = summary.get("calibration")
    if cal:
        print(f"Calibrated on --val_split={config.val_split}: temperature "
              f"{cal['temperature']:.3f}, val ECE {cal['val_ece']:.3f} -> "
              f"{cal['val_ece_calibrated']:.3f}; best.keras and export/ return calibrated "
              f"probabilities ({Path(config.model_dir) / 'calibration.json'}).")
    if summary["status"] == "nan_loss":
        sys.exit("Training stopped: the loss became NaN/inf (see the log above for the fix).")


if __name__ == "__main__":
    cli.run(main)
