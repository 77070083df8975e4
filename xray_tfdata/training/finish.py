"""The end of a training run: best weights back, temperature scaling, the serving export and
summary.json."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from xray_tfdata import files, labels, model_classes
from xray_tfdata import paths as url_paths  # `paths` is summary()'s argument
from xray_tfdata.evaluation import calibration
from xray_tfdata.serving import export
from xray_tfdata.training import distribute, finetune
from xray_tfdata.training.config import TrainConfig
from xray_tfdata.training.epochs import BEST_MODEL, Progress
from xray_tfdata.training.setup import ResolvedData, Restored


def weights_fingerprint(model: keras.Model) -> str:
    """sha256 of all weights as float32 bytes: equal fingerprints = identical weights."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def restore_best(model: keras.Model, progress: Progress, model_dir: Path) -> None:
    """The best epoch's weights: kept in memory this session, else the saved best.keras."""
    if progress.best_weights is not None:
        model.set_weights(progress.best_weights)
    elif (model_dir / BEST_MODEL).is_file():
        model.load_weights(str(model_dir / BEST_MODEL))


def calibrate(config: TrainConfig, model: keras.Model, predict: Callable,
              val_ds: tf.data.Dataset, progress: Progress, model_dir: Path,
              chief: bool, classes: Sequence[str] = labels.DEFAULT_CLASSES
              ) -> dict[str, Any] | None:
    """Temperature scaling on val folded into the best model (finetune.calibrate); best.keras is
    rewritten calibrated and calibration.json records T. A best.keras loaded from an earlier
    finish is kept as it is when calibration.json names it (calibration.model_record)."""
    best_path = model_dir / BEST_MODEL
    if not config.calibrate or progress.stop_reason == "nan_loss" \
            or not (progress.best_weights is not None or best_path.is_file()):
        return None
    if progress.best_weights is None:
        stored = calibration.model_record(best_path)
        if stored is not None:
            return stored
    positive = list(classes).index(labels.positive_class(classes, config.positive_class))
    record = finetune.calibrate(model, predict, val_ds, classes, positive)
    if record["val_operating_point"]["warning"]:
        logging.warning("%s", record["val_operating_point"]["warning"])
    logging.info("Temperature scaling on %s: T = %.3f, val NLL %.4f -> %.4f, ECE %.4f -> %.4f.",
                 config.val_split, record["temperature"], record["val_nll"],
                 record["val_nll_calibrated"], record["val_ece"], record["val_ece_calibrated"])
    if chief:
        with files.atomic_path(best_path) as tmp:
            model_classes.save(model, tmp, classes)
            # The record first, naming the calibrated file by its digest, then the file: a kill
            # between the two leaves the uncalibrated best.keras and a record that is not its
            # own, so the rerun calibrates again from the uncalibrated weights (never twice).
            record[calibration.MODEL_SHA256] = files.sha256_file(tmp)
            files.write_json(model_dir / calibration.CALIBRATION_FILE, record,
                             nan_to_null=True)
    return record


def export_model(model: keras.Model, model_dir: Path, strategy: tf.distribute.Strategy, *,
                 image_size: int, channels: int, resize_mode: str, intensity: str = "none",
                 extra_metadata: dict[str, Any] | None = None,
                 classes: Sequence[str] = labels.DEFAULT_CLASSES) -> str | None:
    """Exports the serving SavedModel to <model_dir>/export via export.export_serving.

    Every worker saves (saving may read mirrored variables collectively); only the chief's copy
    is kept. Returns the chief's export path (None on other workers).
    """
    chief = distribute.is_chief(strategy)
    task_type, task_id = distribute.task_info(strategy)
    target = model_dir / "export"
    if not chief:
        target = model_dir / f".workertemp_{task_type}_{task_id}" / "export"
    if target.exists():
        url_paths.rmtree(target)
    path = export.export_serving(model, str(target), image_size, channels,
                                 resize_mode=resize_mode, extra_metadata=extra_metadata,
                                 intensity=intensity, class_names=classes)
    if not chief:
        url_paths.rmtree(target.parent, ignore_errors=True)
        return None
    return path


def calibration_metadata(config: TrainConfig, record: dict[str, Any] | None
                         ) -> dict[str, Any] | None:
    """What the export's metadata says about its probabilities (None: uncalibrated)."""
    if not record:
        return None
    return {"calibration": record,
            "probabilities": "calibrated: softmax(logits / "
                             f"{record['temperature']:.4f}), the temperature fitted on "
                             f"{config.val_split}"}


def class_weighting(config: TrainConfig) -> str:
    """How the loss weighed the classes, in words for the summary."""
    if config.input.sampling == "balanced":
        return "none: balanced sampling already equalises the classes"
    default = " (the default)" if config.class_weights == "balanced" else ""
    return config.class_weights + default


def summary(config: TrainConfig, strategy: tf.distribute.Strategy, data: ResolvedData, *,
            resolved: dict[str, Any], restored: Restored, progress: Progress, fingerprint: str,
            calibration_record: dict[str, Any] | None, paths: dict[str, Any]) -> dict[str, Any]:
    """summary.json: status, settings, what was resolved at run time (`resolved`: precision,
    strategy, jit_compile, augment_on, class_weights), speeds, the best epoch."""
    state = restored.state
    speeds = progress.epoch_speeds
    steady = speeds[1:] or speeds  # the first epoch pays for tracing and filling the cache
    replicas = strategy.num_replicas_in_sync
    return {
        "status": progress.stop_reason,
        "settings": config.to_dict(),
        "resolved": {
            **resolved, "data_service": config.input.data_service or None,
            "replicas": replicas,
            "per_replica_batch_size": config.global_batch_size // replicas,
            "steps_per_epoch": data.steps_per_epoch,
            "total_steps": config.epochs * data.steps_per_epoch,
            "peak_learning_rate": config.effective_learning_rate,
            "image_size": data.image_size, "channels": data.channels,
            "class_weighting": class_weighting(config),
            "sampling": config.input.sampling,
            "records_dir": str(url_paths.location(config.records_dir).resolve()),
            "num_train_examples": data.num_train,
            "classes": list(data.classes),
        },
        "versions": files.versions(),
        "devices": distribute.describe_devices(),
        "epochs_completed": int(state.epoch.numpy()),
        "steps_completed": progress.step,
        "resumed_from_step": restored.resumed_from,
        "steps_this_session": progress.steps_this_session,
        "images_per_sec": float(np.mean(steady)) if steady else None,
        "images_per_sec_per_epoch": speeds,
        "final_metrics": progress.last_row,
        "best": {"epoch": int(state.best_epoch.numpy()),
                 "val_macro_f1": float(state.best_score.numpy())},
        "weights_fingerprint": fingerprint,
        "calibration": calibration_record,
        "paths": paths,
    }
