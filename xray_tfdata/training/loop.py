"""One custom training loop for every tf.distribute strategy, read top to bottom.

`model.fit` fails under MultiWorkerMirroredStrategy on TF 2.21 / Keras 3 (keras-team/keras#20585),
so a single loop serves one device, several GPUs, several hosts and TPUs alike: strategy.run over a
GradientTape step with tf.nn.compute_average_loss, `steps_per_execution` steps per tf.function call,
a built Keras optimizer (wrapped in LossScaleOptimizer under float16), checkpoints to resume from,
validation on macro-F1 with a best-model save, TensorBoard, CSV history, early and NaN stopping.
Only the chief writes files (checkpointing.py has the multi-worker details).

The pieces, by role: setup.py (data, model, state, inputs, the compiled step), steps.py (loss
and the replica step), epochs.py (one epoch, validation, end-of-epoch bookkeeping), finish.py
(best weights, calibration, export, summary); evaluation/inference.py runs the model.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import keras
import tensorflow as tf
from absl import logging

from xray_tfdata import files, paths
from xray_tfdata.errors import ConfigError
from xray_tfdata.evaluation import inference
from xray_tfdata.training import distribute, epochs, finetune, finish, run_spec, setup
from xray_tfdata.training.config import TrainConfig

LOGS_DIR = "logs"  # TensorBoard logs under model_dir


@contextlib.contextmanager
def _precision_policy(precision: str) -> Iterator[None]:
    """The mixed-precision policy, set before the model is built and restored afterwards."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def train(config: TrainConfig, strategy: tf.distribute.Strategy | None = None, *,
          model_builder: setup.ModelBuilder | None = None,
          data: setup.ResolvedData | None = None) -> dict[str, Any]:
    """Trains, validates and exports per `config`; returns the run summary (also summary.json).

    `strategy` defaults to the current (default) strategy. `model_builder(name, image_size,
    channels, weights=, dropout=)` defaults to models.build_model. `data`:
    setup.resolve_data(config), if the caller already has it.
    """
    strategy = strategy or tf.distribute.get_strategy()
    data = data or setup.resolve_data(config)
    distribute.per_replica_batch_size(config.global_batch_size, strategy)
    precision = distribute.resolve_precision(config.precision, strategy)
    if precision == "mixed_float16" and config.backbone_learning_rate_multiplier != 1.0:
        # Two optimizers would need one shared loss scale; Keras' LossScaleOptimizer has its own.
        raise ConfigError("backbone_learning_rate_multiplier",
                          config.backbone_learning_rate_multiplier,
                          "1.0 under mixed_float16 (loss scaling)",
                          "Use --precision=float32 or mixed_bfloat16.")
    with _precision_policy(precision):
        return _train(config, strategy, data, precision,
                      model_builder or setup.default_model_builder)


def _train(config: TrainConfig, strategy: tf.distribute.Strategy, data: setup.ResolvedData,
           precision: str, model_builder: setup.ModelBuilder) -> dict[str, Any]:
    chief = distribute.is_chief(strategy)
    model_dir = paths.location(config.model_dir)  # a URL: gfile (paths.py), never a local "gs:"
    if chief:
        model_dir.mkdir(parents=True, exist_ok=True)
    # Before anything else is written: a rerun with other run-defining settings is refused here.
    changed_on_resume = run_spec.check_and_record(config, data, precision, model_dir, chief)
    # Setup: the order below is the order of the seeded ops (same seed, same weights).
    parts = setup.build_model(config, strategy, data, precision, model_builder)
    restored = setup.restore(config, strategy, parts, model_dir)
    class_weights = setup.class_weight_vector(config, data.info)
    jit_compile = distribute.resolve_jit_compile(config.jit_compile, strategy)
    feed = setup.train_input(config, strategy, data, restored.start_epoch)
    make_train_steps = setup.step_factory(config, strategy, parts, class_weights, precision,
                                          jit_compile, feed.step_augment)
    predict = inference.predict_fn(parts.model)
    val_ds = setup.validation_dataset(config, data)
    log_dir = model_dir / LOGS_DIR
    writer = (tf.summary.create_file_writer(str(log_dir / "train")) if chief
              else tf.summary.create_noop_writer())
    profile = epochs.ProfileWindow(config.profile_steps, config.steps_per_execution,
                                   str(log_dir) if chief else None)

    # The epochs.
    progress = epochs.Progress(step=int(restored.state.step.numpy()))
    phase, train_steps = None, None
    for epoch in range(restored.start_epoch, config.epochs):
        frozen = finetune.frozen_at(epoch, config.freeze_backbone_epochs)
        if frozen is not phase:  # first epoch of this session, or the unfreeze
            train_steps, phase = make_train_steps(frozen), frozen
            logging.info("Epoch %d: %s.", epoch + 1, "head only (backbone frozen, BatchNorm in "
                         "inference mode)" if frozen else "every layer trains")
        epoch_start_step = progress.step
        ok, *trained = epochs.train_epoch(config, epoch, data.steps_per_epoch, train_steps,
                                          feed.iterator, restored, profile, writer, progress,
                                          chief)
        if not ok:
            break
        epochs.validate(config, epoch, epoch_start_step, trained, predict, val_ds,
                        parts.optimizer, writer, progress)
        if epochs.end_of_epoch(config, epoch, parts.model, restored, progress, model_dir, chief,
                               data.classes):
            break
    profile.maybe_stop(None)

    # The finish: best weights, calibration, export, summary.
    if not progress.last_row and restored.history.rows:  # resumed a finished run
        progress.last_row = dict(restored.history.rows[-1])
    fingerprint = finish.weights_fingerprint(parts.model)
    logging.info("Final weights fingerprint: %s (step %d)", fingerprint, progress.step)
    finish.restore_best(parts.model, progress, model_dir)
    record = finish.calibrate(config, parts.model, predict, val_ds, progress, model_dir, chief,
                              data.classes)
    export_dir = None
    if config.export and progress.stop_reason != "nan_loss":
        export_dir = finish.export_model(
            parts.model, model_dir, strategy, image_size=data.image_size,
            channels=data.channels, resize_mode=data.resize_mode, intensity=data.intensity,
            extra_metadata=finish.calibration_metadata(config, record), classes=data.classes)
    summary = finish.summary(
        config, strategy, data, restored=restored, progress=progress, fingerprint=fingerprint,
        calibration_record=record,
        resolved={"precision": precision, "strategy": distribute.strategy_name(strategy),
                  "jit_compile": jit_compile, "augment_on": feed.augment_on,
                  "class_weights": class_weights.tolist(),
                  "collection_adversary": data.collection_plan.describe()
                  if data.collection_plan else None},
        paths={"best_model": str(model_dir / epochs.BEST_MODEL), "export": export_dir,
               "history": str(restored.history.path), "logs": str(log_dir),
               "checkpoints": restored.checkpointer.chief_dir})
    summary["changed_on_resume"] = changed_on_resume
    if chief:
        files.write_json(model_dir / "summary.json", summary, nan_to_null=True)
    return summary
