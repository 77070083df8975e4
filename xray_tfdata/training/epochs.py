"""One epoch of the training loop: the steps (with the profiler window and TensorBoard
scalars), validation, then the end-of-epoch bookkeeping (best model, history, checkpoint,
early stopping). What changes as the run goes lives in `Progress`; everything else is passed in.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2

from xray_tfdata import console, files, labels, model_classes
from xray_tfdata.evaluation import calibration, inference
from xray_tfdata.training import adversary
from xray_tfdata.training.config import TrainConfig
from xray_tfdata.training.setup import Restored

BEST_MODEL = "best.keras"

# tf.summary.scalar lives in the optional tensorboard package; writing the same "scalars" plugin
# summary through core tf.summary.write keeps TensorBoard logs working without it installed.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


def write_scalar(name: str, value: float, step: int) -> None:
    """A TensorBoard scalar into the default summary writer."""
    tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=_SCALAR_METADATA)


@dataclasses.dataclass
class Progress:
    """What changes as the run goes: the global step, per-epoch speeds, the last history row."""

    step: int
    steps_this_session: int = 0
    epoch_speeds: list[float] = dataclasses.field(default_factory=list)
    last_row: dict[str, Any] = dataclasses.field(default_factory=dict)
    stop_reason: str = "completed"
    best_weights: list[np.ndarray] | None = None


class ProfileWindow:
    """Traces `num_steps` steps with the TF profiler, starting after the first (tracing) call."""

    def __init__(self, num_steps: int, steps_per_execution: int, log_dir: str | None) -> None:
        self.start_at = steps_per_execution if num_steps else -1
        self.stop_at = self.start_at + num_steps
        self.log_dir = log_dir
        self.active = False

    def clip(self, done: int, n: int) -> int:
        """Shortens a call so the trace starts and stops on a call boundary."""
        for boundary in (self.start_at, self.stop_at):
            if self.log_dir and done < boundary < done + n:
                n = boundary - done
        return n

    def maybe_start(self, done: int) -> None:
        if self.log_dir and done == self.start_at and not self.active:
            tf.profiler.experimental.start(self.log_dir)
            self.active = True

    def maybe_stop(self, done: int | None) -> None:
        if self.active and (done is None or done >= self.stop_at):
            tf.profiler.experimental.stop()
            self.active = False
            logging.info("Profiler trace written under %s (open TensorBoard's Profile tab).",
                         self.log_dir)


def train_epoch(config: TrainConfig, epoch: int, steps_per_epoch: int,
                train_steps: Callable[[Any, tf.Tensor], dict[str, tf.Tensor]], iterator: Any,
                restored: Restored, profile: ProfileWindow, writer: Any, progress: Progress,
                chief: bool) -> tuple[bool, list[tuple[float, int]], float, console.ProgressBar,
                                      dict[str, float]]:
    """Trains the rest of `epoch` (all of it unless resumed mid-epoch). Returns (ok, the
    (loss, steps) per call, seconds spent in the train function, the epoch's progress bar, the
    collection adversary's sums over the epoch ({} when off)); ok is False when the loss went
    NaN/inf."""
    done_in_epoch = min(max(progress.step - epoch * steps_per_epoch, 0), steps_per_epoch)
    losses, train_seconds, sums = [], 0.0, {}
    bar = console.ProgressBar((steps_per_epoch - done_in_epoch) * config.global_batch_size,
                              f"epoch {epoch + 1}/{config.epochs}", enabled=chief)
    while done_in_epoch < steps_per_epoch:
        n = min(config.steps_per_execution, steps_per_epoch - done_in_epoch)
        if config.checkpoint_every:
            n = min(n, config.checkpoint_every - progress.step % config.checkpoint_every)
        n = profile.clip(progress.steps_this_session, n)
        profile.maybe_start(progress.steps_this_session)
        t0 = time.perf_counter()
        out = {k: float(v) for k, v in train_steps(iterator, tf.constant(n, tf.int32)).items()}
        train_seconds += time.perf_counter() - t0
        loss = out.pop("loss")
        for name, value in out.items():
            sums[name] = sums.get(name, 0.0) + value
        progress.step += n
        done_in_epoch += n
        progress.steps_this_session += n
        profile.maybe_stop(progress.steps_this_session)
        if not math.isfinite(loss):
            progress.stop_reason = "nan_loss"
            logging.error(
                "Training loss is %s at step %d (epoch %d); stopping. The last good checkpoint "
                "is kept in %s. Lower --learning_rate, check the records, or use "
                "--precision=float32.", loss, progress.step, epoch + 1,
                restored.checkpointer.chief_dir)
            bar.close(suffix="loss is not finite")
            return False, losses, train_seconds, bar, sums
        losses.append((loss, n))
        bar.update(n * config.global_batch_size, suffix=f"loss {loss:.4f}")
        restored.state.step.assign(progress.step)
        with writer.as_default():
            write_scalar("batch_loss", loss, progress.step)
        if config.checkpoint_every and progress.step % config.checkpoint_every == 0 \
                and done_in_epoch < steps_per_epoch:
            restored.checkpointer.save()
    return True, losses, train_seconds, bar, sums


def validate(config: TrainConfig, epoch: int, epoch_start_step: int,
             trained: tuple[list[tuple[float, int]], float, console.ProgressBar,
                            dict[str, float]],
             predict: Callable, val_ds: tf.data.Dataset, optimizer: keras.Optimizer,
             writer: Any, progress: Progress) -> None:
    """Validates after the epoch's steps; records the epoch's row in `progress.last_row`, the
    log line and the TensorBoard scalars."""
    losses, train_seconds, bar, sums = trained
    images = (progress.step - epoch_start_step) * config.global_batch_size
    speed = images / train_seconds if train_seconds > 0 else float("nan")
    if progress.step > epoch_start_step:
        progress.epoch_speeds.append(speed)
    val = inference.validation_metrics(predict, val_ds)
    lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    mean_loss = (sum(l * k for l, k in losses) / sum(k for _, k in losses)) if losses \
        else float("nan")
    progress.last_row = {"epoch": epoch + 1, "step": progress.step, "loss": mean_loss,
                         "learning_rate": lr, "images_per_sec": speed,
                         "epoch_seconds": train_seconds,
                         **{f"val_{k}": v for k, v in val.items()}}
    # The collection adversary's loss and accuracy within the class (when on).
    adversarial = adversary.epoch_metrics(sums) if sums else {}
    progress.last_row.update(adversarial)
    said = "".join(f", {k.replace('_', ' ')} {v:.3f}" for k, v in adversarial.items())
    bar.close(suffix=f"loss {mean_loss:.4f}  val macro-F1 {val['macro_f1']:.3f}  "
                     f"val acc {val['accuracy']:.3f}" + said.replace(",", " "))
    logging.info("Epoch %d/%d step %d: loss %.4f, val acc %.4f, val macro-F1 %.4f, val AUC %.4f, "
                 "lr %.3g, %.1f images/s%s", epoch + 1, config.epochs, progress.step, mean_loss,
                 val["accuracy"], val["macro_f1"], val["auc"], lr, speed, said)
    with writer.as_default():
        for key in ("loss", "learning_rate", "images_per_sec", *adversarial):
            write_scalar(f"epoch_{key}", progress.last_row[key], progress.step)
        for key, value in val.items():
            write_scalar(f"val/{key}", value, progress.step)
    writer.flush()


def end_of_epoch(config: TrainConfig, epoch: int, model: keras.Model, restored: Restored,
                 progress: Progress, model_dir: Path, chief: bool,
                 classes: Sequence[str] = labels.DEFAULT_CLASSES) -> bool:
    """Best model on val macro-F1, history row, checkpoint; returns True to stop early."""
    state = restored.state
    val_macro_f1 = progress.last_row["val_macro_f1"]
    if val_macro_f1 > float(state.best_score.numpy()) + 1e-9:
        state.best_score.assign(val_macro_f1)
        state.best_epoch.assign(epoch + 1)
        state.bad_epochs.assign(0)
        progress.best_weights = model.get_weights()
        if chief:
            with files.atomic_path(model_dir / BEST_MODEL) as tmp:
                model_classes.save(model, tmp, classes)
            # This best.keras is uncalibrated until the finish: a stale record must not claim it.
            (model_dir / calibration.CALIBRATION_FILE).unlink(missing_ok=True)
    else:
        state.bad_epochs.assign_add(1)
    restored.history.append(progress.last_row)
    state.epoch.assign(epoch + 1)
    restored.checkpointer.save()
    if config.patience and int(state.bad_epochs.numpy()) >= config.patience:
        progress.stop_reason = "early_stopping"
        logging.warning("Early stopping: val macro-F1 has not improved for %d epochs (best %.4f "
                        "at epoch %d).", config.patience, float(state.best_score.numpy()),
                        int(state.best_epoch.numpy()))
        return True
    return False
