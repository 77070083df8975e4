"""Evaluation of a saved Keras model on one split: metrics with CIs, report, confusion matrix.

`evaluate(EvalConfig(...))` runs the model over the split through the same input pipeline as
training (evaluation mode: one pass, no augmentation), computes `metrics.compute_metrics`, runs the
metadata-only shortcut probe, and writes into the output directory:
  metrics.json          every number, the settings, the model's sha256 and library versions
  report.txt            the same, human-readable (headline metrics with 95% bootstrap CIs)
  confusion_matrix.png  annotated counts and row fractions with class names
  tensorboard/          the confusion-matrix image, headline scalars and the report as text
Each file is written to a temporary name and renamed, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xray_tfdata import console, errors, files, labels
from xray_tfdata.errors import ConfigError
from xray_tfdata.evaluation import metrics, shortcut

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.txt"
CONFUSION_FILE = "confusion_matrix.png"
TENSORBOARD_DIR = "tensorboard"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation run; validates itself."""

    model_path: str
    records_dir: str
    split: str = "test"
    output_dir: str = ""  # "" -> <dir of model>/eval/<split>
    batch_size: int = 64
    bootstrap: int = 1000
    seed: int = 0
    shortcut_probe: bool = True
    shortcut_model: str = shortcut.PROBE_MODELS[0]
    shortcut_threshold: float = shortcut.DEFAULT_THRESHOLD

    def __post_init__(self):
        errors.one_of("split", self.split, labels.SPLITS)
        if not str(self.model_path).endswith(".keras"):
            raise ConfigError("model_path", self.model_path, "the .keras file training wrote",
                              "e.g. workspace/model/best.keras (an exported SavedModel is for "
                              "predict).")
        errors.positive_int("batch_size", self.batch_size)
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) \
                or self.bootstrap < 0:
            raise ConfigError("bootstrap", self.bootstrap,
                              "0 (no intervals) or a resample count such as 1000")
        errors.one_of("shortcut_model", self.shortcut_model, shortcut.PROBE_MODELS)
        if not (isinstance(self.shortcut_threshold, (int, float))
                and 0.0 < self.shortcut_threshold <= 1.0):
            raise ConfigError("shortcut_threshold", self.shortcut_threshold,
                              "a fraction in (0, 1], e.g. 0.8")

    @property
    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return Path(self.model_path).resolve().parent / "eval" / self.split


# ----------------------------------------------------------------------------- model + data


def load_model(model_path: str | os.PathLike):
    """Loads a .keras model for inference; errors name the path and the fix."""
    import keras

    import xray_tfdata.models  # noqa: F401  (registers the package's custom layers for loading)
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No model file at {str(path)!r}. Train first (python -m xray_tfdata.train "
            f"--model_dir=...), then pass --model_path=<model_dir>/best.keras.")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:  # keras raises several types for a bad archive
        raise ValueError(f"Could not load Keras model {str(path)!r}: {err}. Pass a .keras file "
                         f"written by xray_tfdata.train (model.save).") from err


def input_spec(model) -> tuple[int, int]:
    """(image_size, channels) the model expects, from its input shape [None, H, W, C]."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[1] != shape[2] or shape[1] is None:
        raise ValueError(f"Model input shape {shape} is not [batch, size, size, channels]; "
                         f"evaluation needs a square-image classifier from xray_tfdata.models.")
    return int(shape[1]), int(shape[3])


def eval_dataset(records_dir: str, split: str, image_size: int, channels: int, batch_size: int):
    """The split in evaluation mode (one pass, remainder kept, no augmentation, fixed order)."""
    # Imported here: `evaluate` validates its flags before TensorFlow is loaded.
    from xray_tfdata.inputs import pipeline
    from xray_tfdata.records import manifest

    manifest.check_compatible(manifest.read_manifest(records_dir), image_size=image_size,
                              channels=channels, records_dir=records_dir)
    config = pipeline.InputConfig(global_batch_size=batch_size, image_size=image_size,
                                  channels=channels, training=False, cache="none", augment=False,
                                  deterministic=True)
    return pipeline.build_dataset(records_dir, split, config)


def predict_fn(model):
    """The model's inference step as a tf.function; build it once and reuse it across passes."""
    import tensorflow as tf

    # reduce_retracing: the last batch is smaller; one extra trace at most.
    return tf.function(lambda x: model(x, training=False), reduce_retracing=True)


def split_size(records_dir: str, split: str) -> int:
    """Examples in `split`, from the manifest (for progress bars)."""
    from xray_tfdata.records import manifest

    return manifest.num_examples(manifest.read_manifest(records_dir), split)


def run_model(model, dataset, *, predict=None, label: str = "", total: int = 0
              ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Runs the model (or a ready `predict` step from `predict_fn`) over (images, labels)
    batches; returns labels and each output, float32. With `label`, shows a progress bar of
    `total` images."""
    import tensorflow as tf

    step = predict or predict_fn(model)
    bar = console.ProgressBar(total, label) if label else None
    all_labels: list[np.ndarray] = []
    outputs: list[list[np.ndarray]] = []
    for images, batch_labels in dataset:
        out = step(images)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        if not outputs:
            outputs = [[] for _ in out]
        for acc, value in zip(outputs, out):
            acc.append(np.asarray(tf.cast(value, tf.float32)))
        all_labels.append(np.asarray(batch_labels))
        if bar:
            bar.update(len(all_labels[-1]))
    if bar:
        bar.close()
    if not all_labels:
        raise ValueError("The split yielded no examples; check the records (manifest counts).")
    return (np.concatenate(all_labels).astype(np.int64),
            [np.concatenate(acc, axis=0) for acc in outputs])


# ----------------------------------------------------------------------------- outputs


def confusion_png(cm: Sequence[Sequence[int]], class_names: Sequence[str], title: str) -> bytes:
    """PNG of the confusion matrix: counts and row fractions in each cell, class names on axes."""
    cm = np.asarray(cm, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    from matplotlib.figure import Figure  # Agg rendering, no global backend switch

    fig = Figure(figsize=(6.0, 5.0), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{frac[i, j]:.1%}", ha="center", va="center",
                    color="white" if frac[i, j] > 0.5 else "black", fontsize=11)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=list(class_names))
    ax.set_yticks(ticks, labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _plugin(name: str):
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=name))


def write_tensorboard(logdir: str | os.PathLike, tag: str, result: dict[str, Any], png: bytes,
                      report: str, step: int = 0) -> None:
    """Confusion-matrix image, headline scalars (with CI bounds) and the report as text.

    tf.summary.image/scalar/text live in the optional tensorboard package; writing the same
    plugin summaries ("images", "scalars", "text") through core tf.summary.write keeps the logs
    readable by TensorBoard without that package installed here.
    """
    import tensorflow as tf

    def scalar(name: str, value: float) -> None:
        tf.summary.write(name, tf.constant(value, tf.float32), step=step,
                         metadata=_plugin("scalars"))

    height, width = tf.image.decode_png(png).shape[:2]
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        # The images plugin's tensor: [width, height, encoded image...] as strings.
        tf.summary.write(f"{tag}/confusion_matrix",
                         tf.constant([str(width).encode(), str(height).encode(), png]),
                         step=step, metadata=_plugin("images"))
        for key in ("accuracy", "macro_f1", "macro_auc"):
            if result[key] is not None:
                scalar(f"{tag}/{key}", result[key])
            ci = result["confidence_intervals"].get(key, {})
            for bound in ("low", "high"):
                if ci.get(bound) is not None:
                    scalar(f"{tag}/{key}_ci_{bound}", ci[bound])
        for name, row in result["per_class"].items():
            scalar(f"{tag}/sensitivity/{name}", row["sensitivity"])
            scalar(f"{tag}/specificity/{name}", row["specificity"])
        # Markdown renders a code block; keeps the fixed-width table readable.
        tf.summary.write(f"{tag}/report", tf.constant("```\n" + report + "\n```"), step=step,
                         metadata=_plugin("text"))
    writer.flush()
    writer.close()


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Evaluates config.model_path on config.split, writes the outputs, returns metrics.json."""
    from xray_tfdata.inputs import pipeline

    model = load_model(config.model_path)
    image_size, channels = input_spec(model)
    dataset = eval_dataset(config.records_dir, config.split, image_size, channels,
                           config.batch_size)
    y_true, (probs, *_) = run_model(
        model, dataset, label=f"evaluate {config.split}",
        total=split_size(config.records_dir, config.split))
    if probs.ndim != 2 or probs.shape[1] != labels.NUM_CLASSES:
        raise ValueError(f"The model outputs shape {probs.shape[1:]}, expected "
                         f"[{labels.NUM_CLASSES}] class probabilities.")
    result = metrics.compute_metrics(y_true, probs, n_resamples=config.bootstrap,
                                     seed=config.seed)
    if config.shortcut_probe:
        train_meta = pipeline.read_metadata(config.records_dir, "train")
        eval_meta = pipeline.read_metadata(config.records_dir, config.split)
        result["shortcut_probe"] = shortcut.run_probe(
            train_meta, eval_meta, result["macro_f1"], model=config.shortcut_model,
            threshold=config.shortcut_threshold, seed=config.seed)
        if config.split == "train":
            result["shortcut_probe"]["message"] += (
                " (Scored on train, the probe's own training data: its score is optimistic.)")
    result["settings"] = {**dataclasses.asdict(config),
                          "model_sha256": files.sha256_file(config.model_path),
                          "model_name": model.name, "image_size": image_size,
                          "channels": channels, "versions": files.versions()}
    write_outputs(config.resolved_output_dir, result, config.split,
                  title=f"{model.name} on {config.split} (n={result['num_examples']})")
    return result


def report_text(result: dict[str, Any], title: str) -> str:
    text = [title, "=" * len(title), metrics.format_summary(result)]
    probe = result.get("shortcut_probe")
    if probe:
        text += ["shortcut probe (metadata only, no pixels):", probe["message"]]
    return "\n".join(text) + "\n"


def write_outputs(output_dir: Path, result: dict[str, Any], split: str, title: str) -> dict:
    """metrics.json, report.txt, confusion_matrix.png and tensorboard/ under output_dir."""
    output_dir.mkdir(parents=True, exist_ok=True)
    report = report_text(result, title)
    png = confusion_png(result["confusion_matrix"], result["class_names"], title)
    paths = {
        "metrics": files.write_atomic(output_dir / METRICS_FILE,
                                json.dumps(result, indent=2, sort_keys=True) + "\n"),
        "report": files.write_atomic(output_dir / REPORT_FILE, report),
        "confusion_matrix": files.write_atomic(output_dir / CONFUSION_FILE, png),
    }
    write_tensorboard(output_dir / TENSORBOARD_DIR, split, result, png, report)
    paths["tensorboard"] = output_dir / TENSORBOARD_DIR
    return paths
