"""One custom training loop for every tf.distribute strategy.

`model.fit` fails under MultiWorkerMirroredStrategy on TF 2.21 / Keras 3 (keras-team/keras#20585),
so a single loop serves one device, several GPUs, several hosts and TPUs alike: strategy.run over a
GradientTape step with tf.nn.compute_average_loss, `steps_per_execution` steps per tf.function call,
a built Keras optimizer (wrapped in LossScaleOptimizer under float16), checkpoints to resume from,
validation on macro-F1 with a best-model save, TensorBoard, CSV history, early and NaN stopping.
Only the chief writes files (checkpointing.py has the multi-worker details).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from xray_tfdata import console, files, labels, models
from xray_tfdata.errors import ConfigError
from xray_tfdata.evaluation import evaluator
from xray_tfdata.inputs import collection_select, pipeline
from xray_tfdata.records import manifest as manifest_lib
from xray_tfdata.training import checkpointing, distribute, finetune, steps
from xray_tfdata.training.config import TrainConfig

ModelBuilder = Callable[..., keras.Model]
LOGS_DIR = "logs"  # TensorBoard logs under model_dir


def _default_model_builder(name: str, image_size: int, channels: int, **kwargs: Any) -> keras.Model:
    return models.build_model(name, image_size, channels, **kwargs)


@dataclasses.dataclass(frozen=True)
class ResolvedData:
    """What the records say, checked against the config: read once, before any TF op."""

    manifest: dict[str, Any]
    image_size: int
    channels: int
    resize_mode: str
    num_train: int
    steps_per_epoch: int
    intensity: str = "none"  # the records' --intensity: the export applies it to uploads


def resolve_data(config: TrainConfig) -> ResolvedData:
    """Reads the manifest and checks the records fit the config; cheap (no TF ops)."""
    manifest = manifest_lib.read_manifest(config.records_dir)
    image = manifest.get("image", {})
    image_size = config.image_size or int(image.get("size", 0))
    channels = int(image.get("channels", 1))
    manifest_lib.check_compatible(manifest, image_size=image_size, channels=channels,
                                  records_dir=config.records_dir)
    manifest_lib.require_splits(manifest, ["train"], config.records_dir, purpose="training")
    splits = manifest.get("splits", {})
    for split, field in (("train", "records_dir"), (config.val_split, "val_split")):
        if split not in splits or not collection_select.num_examples(
                manifest, split, config.collections, config.exclude_collections):
            raise ConfigError(
                field, config.records_dir if field == "records_dir" else split,
                f"records with a non-empty {split!r} split (found: {sorted(splits)})",
                "Rebuild the records with --val_fraction > 0, or pass --val_split=<split>.",
            )
    num_train = collection_select.num_examples(manifest, "train", config.collections,
                                               config.exclude_collections)
    steps_per_epoch = config.steps_per_epoch or num_train // config.global_batch_size
    if steps_per_epoch < 1:
        raise ConfigError("global_batch_size", config.global_batch_size,
                          f"at most the {num_train} training examples",
                          "Lower --global_batch_size or set --steps_per_epoch.")
    return ResolvedData(manifest=manifest, image_size=image_size, channels=channels,
                        resize_mode=image.get("resize_mode", "stretch"), num_train=num_train,
                        steps_per_epoch=steps_per_epoch, intensity=image.get("intensity", "none"))


def class_weight_vector(config: TrainConfig, manifest: dict[str, Any]) -> np.ndarray:
    """Per-class loss weights: ones, or n / (K * n_c) from the train split's counts ("balanced").

    Ones under balanced sampling: the batches already hold every class equally, and weighting
    them again would over-correct (the minority class counted n / n_c times twice)."""
    if config.class_weights == "none" or config.sampling != "natural":
        return np.ones(labels.NUM_CLASSES, np.float32)
    counts = np.asarray(collection_select.class_counts(
        manifest, "train", config.collections, config.exclude_collections), np.float64)
    weights = np.where(counts > 0, counts.sum() / (labels.NUM_CLASSES * np.maximum(counts, 1)), 1.0)
    return weights.astype(np.float32)


def make_lr_schedule(config: TrainConfig, steps_per_epoch: int, scale: float = 1.0,
                     ) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warmup from 0 to the (optionally batch-scaled) peak x `scale`, then cosine decay
    to 0."""
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    peak = config.effective_learning_rate * scale
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else peak,
        decay_steps=max(total - warmup, 1),
        warmup_target=peak if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(config: TrainConfig, steps_per_epoch: int, precision: str,
                   lr_scale: float = 1.0) -> keras.Optimizer:
    """AdamW or SGD+momentum on the warmup+cosine schedule; loss scaling under float16."""
    schedule = make_lr_schedule(config, steps_per_epoch, lr_scale)
    if config.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate=schedule,
                                           weight_decay=config.weight_decay)
    else:
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum,
                                         weight_decay=config.weight_decay or None)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def weights_fingerprint(model: keras.Model) -> str:
    """sha256 of all weights as float32 bytes: equal fingerprints = identical weights."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def train(config: TrainConfig, strategy: tf.distribute.Strategy | None = None, *,
          model_builder: ModelBuilder | None = None,
          data: ResolvedData | None = None) -> dict[str, Any]:
    """Trains, validates and exports per `config`; returns the run summary (also summary.json).

    `strategy` defaults to the current (default) strategy. `model_builder(name, image_size,
    channels, weights=, dropout=)` defaults to models.build_model. The mixed-precision policy is
    set before the model is built and restored afterwards. `data`: resolve_data(config), if the
    caller already has it.
    """
    strategy = strategy or tf.distribute.get_strategy()
    data = data or resolve_data(config)
    distribute.per_replica_batch_size(config.global_batch_size, strategy)
    precision = distribute.resolve_precision(config.precision, strategy)
    if precision == "mixed_float16" and config.backbone_learning_rate_multiplier != 1.0:
        # Two optimizers would need one shared loss scale; Keras' LossScaleOptimizer has its own.
        raise ConfigError("backbone_learning_rate_multiplier",
                          config.backbone_learning_rate_multiplier,
                          "1.0 under mixed_float16 (loss scaling)",
                          "Use --precision=float32 or mixed_bfloat16.")
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        run = _build_run(config, strategy, data, precision,
                         model_builder or _default_model_builder)
        progress = _Progress(step=int(run.state.step.numpy()))
        for epoch in range(run.start_epoch, config.epochs):
            if not _train_epoch(run, progress, epoch) or _end_of_epoch(run, progress, epoch):
                break
        run.profile.maybe_stop(None)
        return _finish(run, progress)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


@dataclasses.dataclass
class _Run:
    """The live objects of one training run, built once by `_build_run`."""

    config: TrainConfig
    strategy: tf.distribute.Strategy
    data: ResolvedData
    precision: str
    jit_compile: bool
    augment_on: str  # "host" | "device", resolved
    chief: bool
    model_dir: Path
    model: keras.Model
    optimizer: keras.Optimizer
    state: checkpointing.RunState
    checkpointer: checkpointing.Checkpointer
    history: checkpointing.History
    resumed_from: int
    start_epoch: int
    class_weights: np.ndarray
    train_steps: Callable[[Any, tf.Tensor], tf.Tensor]
    iterator: Any
    predict: Callable[[tf.Tensor], tf.Tensor]
    val_ds: tf.data.Dataset
    writer: Any
    profile: steps.ProfileWindow
    make_train_steps: Callable[[bool], Callable[[Any, tf.Tensor], tf.Tensor]]
    frozen: bool | None = None  # the phase run.train_steps was built for

    @property
    def best_path(self) -> Path:
        return self.model_dir / "best.keras"

    @property
    def log_dir(self) -> Path:
        return self.model_dir / LOGS_DIR


@dataclasses.dataclass
class _Progress:
    """What changes as the run goes: the global step, per-epoch speeds, the last history row."""

    step: int
    steps_this_session: int = 0
    epoch_speeds: list[float] = dataclasses.field(default_factory=list)
    last_row: dict[str, Any] = dataclasses.field(default_factory=dict)
    stop_reason: str = "completed"
    best_weights: list[np.ndarray] | None = None


def _build_run(config: TrainConfig, strategy: tf.distribute.Strategy, data: ResolvedData,
               precision: str, model_builder: ModelBuilder) -> _Run:
    """Model, optimizer and checkpoint state (restored if a run is resumed), the compiled train
    function, the train iterator and validation dataset, and the summary writer."""
    chief = distribute.is_chief(strategy)
    model_dir = Path(config.model_dir)
    if chief:
        model_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = model_builder(config.model, data.image_size, data.channels,
                              weights=config.weights, dropout=config.dropout, seed=config.seed)
        optimizer = make_optimizer(config, data.steps_per_epoch, precision)
        head_vars, backbone_vars = finetune.split_variables(model)
        backbone_optimizer = None
        if backbone_vars and config.backbone_learning_rate_multiplier != 1.0:
            backbone_optimizer = make_optimizer(config, data.steps_per_epoch, precision,
                                                config.backbone_learning_rate_multiplier)
            backbone_optimizer.build(backbone_vars)
        # Build the slots now, inside the scope, so they are mirrored like the weights; for
        # every variable, before any freezing, so checkpoints look the same in both phases.
        optimizer.build(head_vars if backbone_optimizer is not None
                        else model.trainable_variables)
    state = checkpointing.RunState(model, optimizer, backbone_optimizer)
    checkpointer = checkpointing.Checkpointer(state, model_dir, strategy, config.max_checkpoints)
    resumed_from = checkpointer.restore()
    start_epoch = min(int(state.epoch.numpy()), config.epochs)
    history = checkpointing.History(model_dir / checkpointing.HISTORY_NAME, chief, start_epoch)

    class_weights = class_weight_vector(config, data.manifest)
    loss_fn = steps.make_loss_fn(class_weights, config.label_smoothing, config.global_batch_size)
    backbone_ids = frozenset(id(v) for v in backbone_vars)
    jit_compile = distribute.resolve_jit_compile(config.jit_compile, strategy)
    augment_on, step_augment, iterator = _train_input(config, strategy, data, start_epoch)

    def make_train_steps(frozen: bool):
        # One compiled function per phase: its variable list is fixed when traced.
        finetune.set_backbone_frozen(model, frozen)
        return steps.make_train_function(
            strategy, model, optimizer, loss_fn, jit_compile=jit_compile,
            loss_scaling=precision == "mixed_float16", augment=step_augment,
            backbone_optimizer=backbone_optimizer, backbone_ids=backbone_ids)

    predict = evaluator.predict_fn(model)
    val_ds = pipeline.build_dataset(config.records_dir, config.val_split, pipeline.InputConfig(
        global_batch_size=config.global_batch_size, image_size=data.image_size,
        channels=data.channels, training=False, augment=False,
        cache="none" if config.cache == "none" else "memory", seed=config.seed,
        collections=config.collections, exclude_collections=config.exclude_collections))

    log_dir = model_dir / LOGS_DIR
    writer = (tf.summary.create_file_writer(str(log_dir / "train")) if chief
              else tf.summary.create_noop_writer())
    profile = steps.ProfileWindow(config.profile_steps, config.steps_per_execution,
                                  str(log_dir) if chief else None)
    return _Run(config=config, strategy=strategy, data=data, precision=precision,
                jit_compile=jit_compile, augment_on=augment_on, chief=chief,
                model_dir=model_dir, model=model, optimizer=optimizer, state=state,
                checkpointer=checkpointer, history=history, resumed_from=resumed_from,
                start_epoch=start_epoch, class_weights=class_weights, train_steps=None,
                iterator=iterator, predict=predict, val_ds=val_ds, writer=writer, profile=profile,
                make_train_steps=make_train_steps)


def _train_input(config: TrainConfig, strategy: tf.distribute.Strategy, data: ResolvedData,
                 start_epoch: int) -> tuple[str, Callable | None, Any]:
    """Where augmentation runs ("host" | "device"), the step's augmentation (device mode) and
    the distributed train iterator (fetching batches to the devices ahead of the step)."""
    from xray_tfdata.inputs import device_augment  # pylint: disable=C0415

    augment_on = device_augment.resolve_augment_on(config.augment_on)
    input_config = pipeline.InputConfig(
        global_batch_size=config.global_batch_size, image_size=data.image_size,
        channels=data.channels, training=True, cache=config.cache,
        shuffle_buffer=config.shuffle_buffer, augment=config.augment, sampling=config.sampling,
        # Reseed per resumed epoch so a resumed run does not replay epoch 0's order.
        seed=config.seed + start_epoch, deterministic=config.deterministic,
        data_service=config.data_service, job_prefix=config.data_service_job,
        collections=config.collections, exclude_collections=config.exclude_collections,
    )
    # Device augmentation: the step augments (seeded by the global step, so resuming needs no
    # reseed); the host pipeline then only reads cached uint8, shuffles, batches, prefetches.
    step_augment = None
    if config.augment and augment_on == "device":
        step_augment = device_augment.make_step_augment(input_config.augment_params,
                                                        config.seed)
    input_config = device_augment.host_input_config(input_config, augment_on)
    train_ds = strategy.distribute_datasets_from_function(
        pipeline.dataset_fn(config.records_dir, "train", input_config),
        options=device_augment.input_options(strategy))
    return augment_on, step_augment, iter(train_ds)


def _train_epoch(run: _Run, progress: _Progress, epoch: int) -> bool:
    """Trains the rest of `epoch` (all of it unless resumed mid-epoch) and validates; records the
    epoch's row in `progress.last_row`. Returns False when the loss went NaN/inf."""
    config, steps_per_epoch = run.config, run.data.steps_per_epoch
    frozen = finetune.frozen_at(epoch, config.freeze_backbone_epochs)
    if run.frozen is not frozen:  # first epoch of this session, or the unfreeze
        run.train_steps, run.frozen = run.make_train_steps(frozen), frozen
        logging.info("Epoch %d: %s.", epoch + 1, "head only (backbone frozen, BatchNorm in "
                     "inference mode)" if frozen else "every layer trains")
    done_in_epoch = min(max(progress.step - epoch * steps_per_epoch, 0), steps_per_epoch)
    epoch_start_step = progress.step
    losses, train_seconds = [], 0.0
    bar = console.ProgressBar((steps_per_epoch - done_in_epoch) * config.global_batch_size,
                              f"epoch {epoch + 1}/{config.epochs}", enabled=run.chief)
    while done_in_epoch < steps_per_epoch:
        n = min(config.steps_per_execution, steps_per_epoch - done_in_epoch)
        if config.checkpoint_every:
            n = min(n, config.checkpoint_every - progress.step % config.checkpoint_every)
        n = run.profile.clip(progress.steps_this_session, n)
        run.profile.maybe_start(progress.steps_this_session)
        t0 = time.perf_counter()
        loss = float(run.train_steps(run.iterator, tf.constant(n, tf.int32)))
        train_seconds += time.perf_counter() - t0
        progress.step += n
        done_in_epoch += n
        progress.steps_this_session += n
        run.profile.maybe_stop(progress.steps_this_session)
        if not math.isfinite(loss):
            progress.stop_reason = "nan_loss"
            logging.error(
                "Training loss is %s at step %d (epoch %d); stopping. The last good checkpoint "
                "is kept in %s. Lower --learning_rate, check the records, or use "
                "--precision=float32.", loss, progress.step, epoch + 1,
                run.checkpointer.chief_dir)
            bar.close(suffix="loss is not finite")
            return False
        losses.append((loss, n))
        bar.update(n * config.global_batch_size, suffix=f"loss {loss:.4f}")
        run.state.step.assign(progress.step)
        with run.writer.as_default():
            steps.write_scalar("batch_loss", loss, progress.step)
        if config.checkpoint_every and progress.step % config.checkpoint_every == 0 \
                and done_in_epoch < steps_per_epoch:
            run.checkpointer.save()

    images = (progress.step - epoch_start_step) * config.global_batch_size
    speed = images / train_seconds if train_seconds > 0 else float("nan")
    if progress.step > epoch_start_step:
        progress.epoch_speeds.append(speed)
    val = steps.evaluate(run.predict, run.val_ds)
    lr = float(keras.ops.convert_to_numpy(run.optimizer.learning_rate))
    mean_loss = (sum(l * k for l, k in losses) / sum(k for _, k in losses)) if losses \
        else float("nan")
    progress.last_row = {"epoch": epoch + 1, "step": progress.step, "loss": mean_loss,
                         "learning_rate": lr, "images_per_sec": speed,
                         "epoch_seconds": train_seconds,
                         **{f"val_{k}": v for k, v in val.items()}}
    bar.close(suffix=f"loss {mean_loss:.4f}  val macro-F1 {val['macro_f1']:.3f}  "
                     f"val acc {val['accuracy']:.3f}")
    logging.info("Epoch %d/%d step %d: loss %.4f, val acc %.4f, val macro-F1 %.4f, val AUC %.4f, "
                 "lr %.3g, %.1f images/s", epoch + 1, config.epochs, progress.step, mean_loss,
                 val["accuracy"], val["macro_f1"], val["auc"], lr, speed)
    with run.writer.as_default():
        for key in ("loss", "learning_rate", "images_per_sec"):
            steps.write_scalar(f"epoch_{key}", progress.last_row[key], progress.step)
        for key, value in val.items():
            steps.write_scalar(f"val/{key}", value, progress.step)
    run.writer.flush()
    return True


def _end_of_epoch(run: _Run, progress: _Progress, epoch: int) -> bool:
    """Best model on val macro-F1, history row, checkpoint; returns True to stop early."""
    state, config = run.state, run.config
    val_macro_f1 = progress.last_row["val_macro_f1"]
    if val_macro_f1 > float(state.best_score.numpy()) + 1e-9:
        state.best_score.assign(val_macro_f1)
        state.best_epoch.assign(epoch + 1)
        state.bad_epochs.assign(0)
        progress.best_weights = run.model.get_weights()
        if run.chief:
            with files.atomic_path(run.best_path) as tmp:
                run.model.save(tmp)
            # This best.keras is uncalibrated until _finish: a stale record must not claim it.
            (run.model_dir / finetune.CALIBRATION_FILE).unlink(missing_ok=True)
    else:
        state.bad_epochs.assign_add(1)
    run.history.append(progress.last_row)
    state.epoch.assign(epoch + 1)
    run.checkpointer.save()
    if config.patience and int(state.bad_epochs.numpy()) >= config.patience:
        progress.stop_reason = "early_stopping"
        logging.warning("Early stopping: val macro-F1 has not improved for %d epochs (best %.4f "
                        "at epoch %d).", config.patience, float(state.best_score.numpy()),
                        int(state.best_epoch.numpy()))
        return True
    return False


def _finish(run: _Run, progress: _Progress) -> dict[str, Any]:
    """Restores the best weights, exports them, and writes summary.json; returns the summary."""
    config, state = run.config, run.state
    if not progress.last_row and run.history.rows:  # resumed a finished run: report its last epoch
        progress.last_row = dict(run.history.rows[-1])
    fingerprint = weights_fingerprint(run.model)
    logging.info("Final weights fingerprint: %s (step %d)", fingerprint, progress.step)
    if progress.best_weights is not None:
        run.model.set_weights(progress.best_weights)
    elif run.best_path.is_file():
        run.model.load_weights(str(run.best_path))
    calibration_record = _calibrate(run, progress)
    export_dir = steps.export_model(
        run.model, run.model_dir, run.data, run.strategy,
        enabled=config.export and progress.stop_reason != "nan_loss",
        extra_metadata=None if not calibration_record else {
            "calibration": calibration_record,
            "probabilities": "calibrated: softmax(logits / "
                             f"{calibration_record['temperature']:.4f}), the temperature fitted "
                             f"on {config.val_split}"})

    speeds = progress.epoch_speeds
    steady = speeds[1:] or speeds  # the first epoch pays for tracing and filling the cache
    summary = {
        "status": progress.stop_reason,
        "settings": config.to_dict(),
        "resolved": {
            "precision": run.precision, "strategy": distribute.strategy_name(run.strategy),
            "jit_compile": run.jit_compile, "augment_on": run.augment_on,
            "data_service": config.data_service or None,
            "replicas": run.strategy.num_replicas_in_sync,
            "per_replica_batch_size":
                config.global_batch_size // run.strategy.num_replicas_in_sync,
            "steps_per_epoch": run.data.steps_per_epoch,
            "total_steps": config.epochs * run.data.steps_per_epoch,
            "peak_learning_rate": config.effective_learning_rate,
            "image_size": run.data.image_size, "channels": run.data.channels,
            "class_weights": run.class_weights.tolist(),
            "class_weighting": ("none: balanced sampling already equalises the classes"
                                if config.sampling == "balanced" else config.class_weights
                                + (" (the default)" if config.class_weights == "balanced"
                                   else "")),
            "sampling": config.sampling,
            "records_dir": str(Path(config.records_dir).resolve()),
            "num_train_examples": run.data.num_train,
        },
        "versions": files.versions(),
        "devices": distribute.describe_devices(),
        "epochs_completed": int(state.epoch.numpy()),
        "steps_completed": progress.step,
        "resumed_from_step": run.resumed_from,
        "steps_this_session": progress.steps_this_session,
        "images_per_sec": float(np.mean(steady)) if steady else None,
        "images_per_sec_per_epoch": speeds,
        "final_metrics": progress.last_row,
        "best": {"epoch": int(state.best_epoch.numpy()),
                 "val_macro_f1": float(state.best_score.numpy())},
        "weights_fingerprint": fingerprint,
        "calibration": calibration_record,
        "paths": {"best_model": str(run.best_path), "export": export_dir,
                  "history": str(run.history.path), "logs": str(run.log_dir),
                  "checkpoints": run.checkpointer.chief_dir},
    }
    if run.chief:
        files.write_json(run.model_dir / "summary.json", summary, nan_to_null=True)
    return summary


def _calibrate(run: _Run, progress: _Progress) -> dict[str, Any] | None:
    """Temperature scaling on val folded into the best model (finetune.calibrate); best.keras is
    rewritten calibrated and calibration.json records T. A best.keras loaded from an earlier
    finish is already calibrated (its calibration.json still exists): kept as it is."""
    path = run.model_dir / finetune.CALIBRATION_FILE
    if not run.config.calibrate or progress.stop_reason == "nan_loss" \
            or not (progress.best_weights is not None or run.best_path.is_file()):
        return None
    if progress.best_weights is None and path.is_file():
        return json.loads(path.read_text())
    record = finetune.calibrate(run.model, run.predict, run.val_ds)
    logging.info("Temperature scaling on %s: T = %.3f, val NLL %.4f -> %.4f, ECE %.4f -> %.4f.",
                 run.config.val_split, record["temperature"], record["val_nll"],
                 record["val_nll_calibrated"], record["val_ece"], record["val_ece_calibrated"])
    if run.chief:
        with files.atomic_path(run.best_path) as tmp:
            run.model.save(tmp)
        files.write_json(path, record, nan_to_null=True)
    return record
