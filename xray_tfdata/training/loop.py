"""One custom training loop for every tf.distribute strategy.

`model.fit` fails under MultiWorkerMirroredStrategy on TF 2.21 / Keras 3 (keras-team/keras#20585),
so a single loop serves one device, several GPUs, several hosts and TPUs alike: strategy.run over a
GradientTape step with tf.nn.compute_average_loss, `steps_per_execution` steps per tf.function call,
a built Keras optimizer (wrapped in LossScaleOptimizer under float16), checkpoints to resume from,
validation on macro-F1 with a best-model save, TensorBoard, CSV history, early and NaN stopping.
Only the chief writes files (checkpointing.py has the multi-worker details).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from xray_tfdata import files, labels
from xray_tfdata.evaluation import evaluator
from xray_tfdata.records import manifest as manifest_lib
from xray_tfdata.training import checkpointing, distribute, steps
from xray_tfdata.training.config import ConfigError, TrainConfig

ModelBuilder = Callable[..., keras.Model]


def _default_model_builder(name: str, image_size: int, channels: int, **kwargs: Any) -> keras.Model:
    from xray_tfdata import models  # lazy: models pulls in keras.applications

    return models.build_model(name, image_size, channels, **kwargs)


def resolve_data(config: TrainConfig) -> dict[str, Any]:
    """Reads the manifest and checks the records fit the config; cheap (no TF ops)."""
    manifest = manifest_lib.read_manifest(config.records_dir)
    image = manifest.get("image", {})
    image_size = config.image_size or int(image.get("size", 0))
    channels = int(image.get("channels", 1))
    manifest_lib.check_compatible(manifest, image_size=image_size, channels=channels,
                                  records_dir=config.records_dir)
    splits = manifest.get("splits", {})
    for split, field in (("train", "records_dir"), (config.val_split, "val_split")):
        if split not in splits or not manifest_lib.num_examples(manifest, split):
            raise ConfigError(
                field, config.records_dir if field == "records_dir" else split,
                f"records with a non-empty {split!r} split (found: {sorted(splits)})",
                "Rebuild the records with --val_fraction > 0, or pass --val_split=<split>.",
            )
    num_train = manifest_lib.num_examples(manifest, "train")
    steps = config.steps_per_epoch or num_train // config.global_batch_size
    if steps < 1:
        raise ConfigError("global_batch_size", config.global_batch_size,
                          f"at most the {num_train} training examples",
                          "Lower --global_batch_size or set --steps_per_epoch.")
    return {"manifest": manifest, "image_size": image_size, "channels": channels,
            "steps_per_epoch": steps, "num_train": num_train,
            "resize_mode": image.get("resize_mode", "stretch")}


def class_weight_vector(config: TrainConfig, manifest: dict[str, Any]) -> np.ndarray:
    """Per-class loss weights: ones, or n / (K * n_c) from the train split's counts ("balanced")."""
    if config.class_weights == "none":
        return np.ones(labels.NUM_CLASSES, np.float32)
    counts = np.asarray(manifest_lib.class_counts(manifest, "train"), np.float64)
    weights = np.where(counts > 0, counts.sum() / (labels.NUM_CLASSES * np.maximum(counts, 1)), 1.0)
    return weights.astype(np.float32)


def make_lr_schedule(config: TrainConfig,
                     steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warmup from 0 to the (optionally batch-scaled) peak, then cosine decay to 0."""
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    peak = config.effective_learning_rate
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else peak,
        decay_steps=max(total - warmup, 1),
        warmup_target=peak if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(config: TrainConfig, steps_per_epoch: int, precision: str) -> keras.Optimizer:
    """AdamW or SGD+momentum on the warmup+cosine schedule; loss scaling under float16."""
    schedule = make_lr_schedule(config, steps_per_epoch)
    if config.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate=schedule,
                                           weight_decay=config.weight_decay)
    else:
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum,
                                         weight_decay=config.weight_decay or None)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _versions() -> dict[str, str]:
    import platform
    from importlib import metadata

    try:
        own = metadata.version("xray_tfdata")
    except metadata.PackageNotFoundError:
        own = "unknown"
    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__, "xray_tfdata": own}


def weights_fingerprint(model: keras.Model) -> str:
    """sha256 of all weights as float32 bytes: equal fingerprints = identical weights."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None (strict JSON has no NaN; e.g. AUC of a val split missing a class)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _atomic_json(path: Path, data: dict) -> None:
    files.write_json(path, _json_safe(data), default=str, allow_nan=False)


def train(config: TrainConfig, strategy: tf.distribute.Strategy | None = None, *,
          model_builder: ModelBuilder | None = None) -> dict[str, Any]:
    """Trains, validates and exports per `config`; returns the run summary (also summary.json).

    `strategy` defaults to the current (default) strategy. `model_builder(name, image_size,
    channels, weights=, dropout=)` defaults to models.build_model. The mixed-precision policy is
    set before the model is built and restored afterwards.
    """
    strategy = strategy or tf.distribute.get_strategy()
    data = resolve_data(config)
    distribute.per_replica_batch_size(config.global_batch_size, strategy)
    precision = distribute.resolve_precision(config.precision, strategy)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        return _train(config, strategy, data, precision, model_builder or _default_model_builder)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(config: TrainConfig, strategy: tf.distribute.Strategy, data: dict, precision: str,
           model_builder: ModelBuilder) -> dict[str, Any]:
    from xray_tfdata.inputs import (
        pipeline,  # lazy: keeps `import training` light for the CLI's checks
    )

    chief = distribute.is_chief(strategy)
    model_dir = Path(config.model_dir)
    if chief:
        model_dir.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = data["steps_per_epoch"]
    total_steps = config.epochs * steps_per_epoch
    keras.utils.set_random_seed(config.seed)

    with strategy.scope():
        model = model_builder(config.model, data["image_size"], data["channels"],
                              weights=config.weights, dropout=config.dropout, seed=config.seed)
        optimizer = make_optimizer(config, steps_per_epoch, precision)
        # Build the slots now, inside the scope, so they are mirrored like the weights.
        optimizer.build(model.trainable_variables)
    state = checkpointing.RunState(model, optimizer)
    checkpointer = checkpointing.Checkpointer(state, model_dir, strategy, config.max_checkpoints)
    resumed_from = checkpointer.restore()
    start_epoch = min(int(state.epoch.numpy()), config.epochs)
    history = checkpointing.History(model_dir / checkpointing.HISTORY_NAME, chief, start_epoch)

    class_weights = class_weight_vector(config, data["manifest"])
    loss_fn = steps.make_loss_fn(class_weights, config.label_smoothing,
                                          config.global_batch_size)
    train_steps = steps.make_train_function(
        strategy, model, optimizer, loss_fn, jit_compile=config.jit_compile,
        loss_scaling=precision == "mixed_float16",
    )
    input_config = pipeline.InputConfig(
        global_batch_size=config.global_batch_size, image_size=data["image_size"],
        channels=data["channels"], training=True, cache=config.cache,
        shuffle_buffer=config.shuffle_buffer, augment=config.augment,
        # Reseed per resumed epoch so a resumed run does not replay epoch 0's order.
        seed=config.seed + start_epoch, deterministic=config.deterministic,
    )
    train_ds = strategy.distribute_datasets_from_function(
        pipeline.dataset_fn(config.records_dir, "train", input_config))
    iterator = iter(train_ds)
    predict = evaluator.predict_fn(model)
    val_ds = pipeline.build_dataset(config.records_dir, config.val_split, pipeline.InputConfig(
        global_batch_size=config.global_batch_size, image_size=data["image_size"],
        channels=data["channels"], training=False, augment=False,
        cache="none" if config.cache == "none" else "memory", seed=config.seed))

    log_dir = model_dir / "logs"
    writer = (tf.summary.create_file_writer(str(log_dir / "train")) if chief
              else tf.summary.create_noop_writer())
    profile = steps.ProfileWindow(config.profile_steps, config.steps_per_execution,
                                           str(log_dir) if chief else None)
    best_path = model_dir / "best.keras"
    best_weights = None
    epoch_speeds: list[float] = []
    last_row: dict[str, Any] = {}
    stop_reason = "completed"
    step = int(state.step.numpy())
    steps_this_session = 0

    for epoch in range(start_epoch, config.epochs):
        done_in_epoch = min(max(step - epoch * steps_per_epoch, 0), steps_per_epoch)
        epoch_start_step = step
        losses, train_seconds = [], 0.0
        while done_in_epoch < steps_per_epoch:
            n = min(config.steps_per_execution, steps_per_epoch - done_in_epoch)
            if config.checkpoint_every:
                n = min(n, config.checkpoint_every - step % config.checkpoint_every)
            n = profile.clip(steps_this_session, n)
            profile.maybe_start(steps_this_session)
            t0 = time.perf_counter()
            loss = float(train_steps(iterator, tf.constant(n, tf.int32)))
            train_seconds += time.perf_counter() - t0
            step += n
            done_in_epoch += n
            steps_this_session += n
            profile.maybe_stop(steps_this_session)
            if not math.isfinite(loss):
                stop_reason = "nan_loss"
                logging.error(
                    "Training loss is %s at step %d (epoch %d); stopping. The last good "
                    "checkpoint is kept in %s. Lower --learning_rate, check the records, or use "
                    "--precision=float32.", loss, step, epoch + 1, checkpointer.chief_dir)
                break
            losses.append((loss, n))
            state.step.assign(step)
            with writer.as_default():
                steps.write_scalar("batch_loss", loss, step)
            if config.checkpoint_every and step % config.checkpoint_every == 0 \
                    and done_in_epoch < steps_per_epoch:
                checkpointer.save()
        if stop_reason == "nan_loss":
            break

        images = (step - epoch_start_step) * config.global_batch_size
        speed = images / train_seconds if train_seconds > 0 else float("nan")
        if step > epoch_start_step:
            epoch_speeds.append(speed)
        val = steps.evaluate(predict, val_ds)
        lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        mean_loss = (sum(l * k for l, k in losses) / sum(k for _, k in losses)) if losses \
            else float("nan")
        last_row = {"epoch": epoch + 1, "step": step, "loss": mean_loss, "learning_rate": lr,
                    "images_per_sec": speed, "epoch_seconds": train_seconds,
                    **{f"val_{k}": v for k, v in val.items()}}
        logging.info("Epoch %d/%d step %d: loss %.4f, val acc %.4f, val macro-F1 %.4f, "
                     "val AUC %.4f, lr %.3g, %.1f images/s", epoch + 1, config.epochs, step,
                     mean_loss, val["accuracy"], val["macro_f1"], val["auc"], lr, speed)
        with writer.as_default():
            for key in ("loss", "learning_rate", "images_per_sec"):
                steps.write_scalar(f"epoch_{key}", last_row[key], step)
            for key, value in val.items():
                steps.write_scalar(f"val/{key}", value, step)
        writer.flush()

        if val["macro_f1"] > float(state.best_score.numpy()) + 1e-9:
            state.best_score.assign(val["macro_f1"])
            state.best_epoch.assign(epoch + 1)
            state.bad_epochs.assign(0)
            best_weights = model.get_weights()
            if chief:
                tmp = model_dir / "best.tmp.keras"
                model.save(tmp)
                os.replace(tmp, best_path)
        else:
            state.bad_epochs.assign_add(1)
        history.append(last_row)
        state.epoch.assign(epoch + 1)
        checkpointer.save()
        if config.patience and int(state.bad_epochs.numpy()) >= config.patience:
            stop_reason = "early_stopping"
            logging.info("Early stopping: val macro-F1 has not improved for %d epochs (best "
                         "%.4f at epoch %d).", config.patience, float(state.best_score.numpy()),
                         int(state.best_epoch.numpy()))
            break
    profile.maybe_stop(None)
    if not last_row and history.rows:  # resumed a finished run: report its last epoch
        last_row = dict(history.rows[-1])

    fingerprint = weights_fingerprint(model)
    logging.info("Final weights fingerprint: %s (step %d)", fingerprint, step)
    if best_weights is not None:
        model.set_weights(best_weights)
    elif best_path.is_file():
        model.load_weights(str(best_path))
    export_dir = steps.export_model(model, model_dir, data, strategy,
                                             enabled=config.export and stop_reason != "nan_loss")

    steady = epoch_speeds[1:] or epoch_speeds
    summary = {
        "status": stop_reason,
        "settings": config.to_dict(),
        "resolved": {
            "precision": precision, "strategy": distribute.strategy_name(strategy),
            "replicas": strategy.num_replicas_in_sync,
            "per_replica_batch_size": config.global_batch_size // strategy.num_replicas_in_sync,
            "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
            "peak_learning_rate": config.effective_learning_rate,
            "image_size": data["image_size"], "channels": data["channels"],
            "class_weights": class_weights.tolist(), "num_train_examples": data["num_train"],
        },
        "versions": _versions(),
        "devices": distribute.describe_devices(),
        "epochs_completed": int(state.epoch.numpy()),
        "steps_completed": step,
        "resumed_from_step": resumed_from,
        "steps_this_session": steps_this_session,
        "images_per_sec": float(np.mean(steady)) if steady else None,
        "images_per_sec_per_epoch": epoch_speeds,
        "final_metrics": last_row,
        "best": {"epoch": int(state.best_epoch.numpy()),
                 "val_macro_f1": float(state.best_score.numpy())},
        "weights_fingerprint": fingerprint,
        "paths": {"best_model": str(best_path), "export": export_dir,
                  "history": str(history.path), "logs": str(log_dir),
                  "checkpoints": checkpointer.chief_dir},
    }
    if chief:
        _atomic_json(model_dir / "summary.json", summary)
    return summary
