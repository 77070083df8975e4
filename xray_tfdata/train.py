"""Train a classifier on TFRecords: `python -m xray_tfdata.train`.

One custom training loop for every strategy (one device, several GPUs, several hosts via TF_CONFIG,
TPU), in float32 or mixed precision. A rerun with the same --model_dir resumes from the newest
checkpoint; with other run-defining settings it is refused, naming them (run_spec.json). Writes
to --model_dir: run_spec.json, checkpoints/, logs/ (TensorBoard), history.csv, best.keras,
export/ (SavedModel taking encoded image bytes) and summary.json.

Example:
  python -m xray_tfdata.train --records_dir=workspace/records --model_dir=workspace/model \\
      --model=seed_cnn --epochs=10 --global_batch_size=32
"""

from __future__ import annotations


from absl import app, flags

from xray_tfdata import cli, files, models
from xray_tfdata import paths as url_paths  # `paths` is the summary's in main()
from xray_tfdata.errors import ConfigError
from xray_tfdata.evaluation import calibration
from xray_tfdata.records.manifest import ManifestError
from xray_tfdata.training import config as train_config
from xray_tfdata.training import distribute, run_spec

FLAGS = flags.FLAGS

cli.define_flags(train_config.TrainConfig)
cli.define_flags(distribute.StrategyConfig)
flags.DEFINE_bool("overwrite", False, "Delete a previous run's outputs in --model_dir and start "
                  "from scratch instead of resuming.")  # what the command does, not a setting

_RUN_OUTPUTS = ("checkpoints", "logs", "export", "history.csv", "best.keras", "summary.json",
                calibration.CALIBRATION_FILE, run_spec.RUN_SPEC_FILE)


def config_from_flags() -> train_config.TrainConfig:
    """Builds the TrainConfig from the flags; a bad value becomes a UsageError naming the flag."""
    return cli.settings_from_flags(train_config.TrainConfig)


def _remove_previous_run(model_dir: str) -> None:
    for name in _RUN_OUTPUTS:
        path = url_paths.join(model_dir, name)
        if path.is_dir():
            url_paths.rmtree(path)
        elif path.exists():
            path.unlink()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}; every setting is a --flag.")
    config = config_from_flags()
    # Import after flag checks: a typo must not wait for TensorFlow's start-up.
    from xray_tfdata.training import loop, setup

    try:
        data = setup.resolve_data(config)  # manifest, image size, splits: cheap, no TF op
        # Before any other TF op: MultiWorkerMirroredStrategy must start the collective runtime.
        place = cli.settings_from_flags(distribute.StrategyConfig)
        strategy = distribute.make_strategy(place.strategy, tpu_address=place.tpu_address,
                                            devices=list(place.devices or ()) or None)
        distribute.per_replica_batch_size(config.global_batch_size, strategy)
    except ConfigError as err:
        raise cli.usage_error(err) from err
    except ManifestError as err:
        raise app.UsageError(str(err)) from err
    try:
        setup.prepare_process(config)  # ImageNet weights into the cache, op determinism
    except models.ImageNetWeightsUnavailable as err:
        cli.fail(f"--weights=imagenet: {err}")
    try:
        if FLAGS.overwrite and distribute.is_chief(strategy):
            _remove_previous_run(config.model_dir)
        summary = loop.train(config, strategy, data=data)
    except run_spec.RunSpecMismatch as err:
        cli.fail(str(err))
    except OSError as err:  # disk full, read-only, a file where a directory should be
        cli.fail(files.write_error_message(
            err, "the training output", "--model_dir; a rerun of the same command resumes "
            "from the last checkpoint"))
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
              f"probabilities ({url_paths.join(config.model_dir, 'calibration.json')}).")
    if summary["status"] == "nan_loss":
        cli.fail("Training stopped: the loss became NaN/inf (see the log above for the fix).")


if __name__ == "__main__":
    cli.run(main)
