"""Fault tolerance for the training loop: checkpoints, resume, and the CSV history.

A tf.train.Checkpoint holds the model, the optimizer (slots, iteration count, loss scale), the
number of completed epochs, the global step, the best validation score and the early-stopping
counter, so a killed job resumes exactly where its last checkpoint was taken. The input pipeline
position is not saved: a resumed run restarts the interrupted epoch's data stream (reseeded) and
runs only that epoch's remaining steps, i.e. the data position is exact to within an epoch.

Multi-worker: every worker must take part in a save (variables may be read with collectives), but
only the chief's files are kept; the others write to a per-worker temporary directory that is
deleted right after, as in the TensorFlow multi-worker guide. Every worker restores from the
chief's directory (a shared filesystem, one machine, or a gs:// model_dir is assumed).
model_dir may be a URL: tf.train.CheckpointManager writes through gfile itself.
"""

from __future__ import annotations

import csv
import errno
import io
import os
from typing import Any

import tensorflow as tf

from xray_tfdata import console, files, paths
from xray_tfdata.training import distribute

CHECKPOINT_SUBDIR = "checkpoints"
HISTORY_NAME = "history.csv"
HISTORY_FIELDS: tuple[str, ...] = (
    "epoch", "step", "loss", "learning_rate", "images_per_sec", "epoch_seconds",
    "val_loss", "val_accuracy", "val_macro_f1", "val_auc",
)


class RunState:
    """The checkpointed state of a run. Counters live outside the strategy as plain variables."""

    def __init__(self, model: Any, optimizer: Any, backbone_optimizer: Any = None,
                 adversary: Any = None) -> None:
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.best_score = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_score")
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
        self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_epochs")
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, epoch=self.epoch, step=self.step,
            best_score=self.best_score, best_epoch=self.best_epoch, bad_epochs=self.bad_epochs,
            # The backbone's own optimizer (--backbone_learning_rate_multiplier != 1) only.
            **({"backbone_optimizer": backbone_optimizer} if backbone_optimizer is not None
               else {}),
            # The collection adversary's head and its optimizer (--collection_adversary > 0).
            **({"collection_adversary": adversary.head,
                "collection_adversary_optimizer": adversary.optimizer}
               if adversary is not None else {}),
        )


class Checkpointer:
    """Saves and restores a RunState under <model_dir>/checkpoints (chief) or a temp dir."""

    def __init__(self, state: RunState, model_dir: str | os.PathLike,
                 strategy: tf.distribute.Strategy, max_to_keep: int = 3) -> None:
        self.state = state
        self.chief = distribute.is_chief(strategy)
        self.chief_dir = str(paths.join(model_dir, CHECKPOINT_SUBDIR))
        task_type, task_id = distribute.task_info(strategy)
        if self.chief:
            self.write_dir = self.chief_dir
        else:
            self.write_dir = str(paths.join(model_dir, f".workertemp_{task_type}_{task_id}",
                                            CHECKPOINT_SUBDIR))
        self.manager = tf.train.CheckpointManager(
            state.checkpoint, self.write_dir, max_to_keep=max_to_keep
        )

    def restore(self) -> int:
        """Restores the newest chief checkpoint, if any; returns its step (0 if none)."""
        latest = tf.train.latest_checkpoint(self.chief_dir)
        if latest is None:
            return 0
        # expect_partial: a checkpoint from a build without some optional slot must still load.
        self.state.checkpoint.restore(latest).expect_partial()
        step = int(self.state.step.numpy())
        console.say(
            f"Resuming from {latest}: step {step}, {int(self.state.epoch.numpy())} epoch(s) "
            f"completed, best val macro-F1 {float(self.state.best_score.numpy()):.4f}.")
        return step

    def save(self) -> str:
        """Saves at the current step (every worker must call this); returns the path written.
        A file-system failure (disk full, read-only) is raised as the OSError it is."""
        try:
            path = self.manager.save(checkpoint_number=int(self.state.step.numpy()))
        except (tf.errors.FailedPreconditionError, tf.errors.PermissionDeniedError,
                tf.errors.ResourceExhaustedError, tf.errors.UnknownError) as err:
            raise _as_os_error(err, self.write_dir) from err
        if not self.chief:
            paths.rmtree(paths.location(self.write_dir).parent, ignore_errors=True)
        return path


class History:
    """history.csv: a row per completed epoch; rows of epochs redone after a resume are replaced."""

    def __init__(self, path: str | os.PathLike, enabled: bool, keep_epochs: int,
                 fields: tuple[str, ...] = HISTORY_FIELDS) -> None:
        self.path = paths.location(path)
        self.enabled = enabled
        self.fields = fields  # HISTORY_FIELDS, + the collection adversary's metrics when on
        self.rows: list[dict[str, str]] = []
        if self.path.is_file():
            with io.StringIO(self.path.read_text(), newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= keep_epochs]
        if enabled:
            self._write()

    def append(self, row: dict[str, Any]) -> None:
        self.rows = [r for r in self.rows if int(r["epoch"]) != int(row["epoch"])]
        self.rows.append({k: _fmt(row.get(k)) for k in self.fields})
        if self.enabled:
            self._write()

    def _write(self) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.fields)
        writer.writeheader()
        writer.writerows(self.rows)
        files.write_atomic(self.path, text.getvalue())


# TensorFlow's C++ file system reports errno only as text in its status message.
_ERRNO_TEXT = (("No space left", errno.ENOSPC), ("Disk quota", errno.EDQUOT),
               ("Read-only file system", errno.EROFS), ("Permission denied", errno.EACCES),
               ("Not a directory", errno.ENOTDIR), ("is not a directory", errno.ENOTDIR))


def _as_os_error(err: tf.errors.OpError, directory: str) -> OSError:
    """The OSError behind a failed checkpoint write, so the command reports it as any other
    write failure (one line: the path, the reason, the fix)."""
    for text, number in _ERRNO_TEXT:
        if text.lower() in err.message.lower():
            return OSError(number, os.strerror(number), directory)
    return OSError(errno.EIO, f"checkpoint write failed ({err.message.strip()})", directory)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
